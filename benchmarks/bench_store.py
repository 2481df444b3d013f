"""Store at scale: 100,000 random float32 vectors of width 576.

Bulk put time; `similar` top-10 median latency against a brute-force numpy matrix product over
the same vectors (the reference, measured in the same run); store size on disk vs raw bytes.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from conceptkit.store import RecordDraft, open_store

N, WIDTH, CHUNK = 100_000, 576, 2_000


def du(path: Path) -> int:
    return sum(os.path.getsize(p) for p in path.rglob("*") if p.is_file())


def main() -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((N, WIDTH), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        t0 = time.perf_counter()
        for start in range(0, N, CHUNK):
            store.put_many(
                RecordDraft(tensors={"vector": torch.from_numpy(data[i])}, concept=f"concept {i % 100}", site="blocks.12.hook_resid_post")
                for i in range(start, start + CHUNK)
            )
        put_s = time.perf_counter() - t0
        print(f"  bulk put of {N:,} vectors: {put_s:.1f} s ({N / put_s:,.0f} records/s)")

        queries = rng.standard_normal((51, WIDTH), dtype=np.float32)
        t0 = time.perf_counter()
        store.similar(torch.from_numpy(queries[0]), k=10)
        print(f"  first similar (loads the width-576 matrix into memory): {(time.perf_counter() - t0) * 1000:.0f} ms")
        ck_times, ref_times = [], []
        unit = data / np.linalg.norm(data, axis=1, keepdims=True)
        for q in queries[1:]:
            t0 = time.perf_counter()
            hits = store.similar(torch.from_numpy(q), k=10)
            ck_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            qn = q / np.linalg.norm(q)
            scores = unit @ qn
            top = np.argpartition(-scores, 10)[:10]
            top = top[np.argsort(-scores[top])]
            ref_times.append(time.perf_counter() - t0)
            assert abs(hits[0].score - scores[top[0]]) < 1e-5
        ck_med, ref_med = statistics.median(ck_times), statistics.median(ref_times)
        print(f"  similar top-10 median: {ck_med * 1000:.1f} ms (target <= 50 ms); brute-force numpy: {ref_med * 1000:.1f} ms; ratio {ck_med / ref_med:.2f}x")
        raw = N * WIDTH * 4
        size = du(Path(tmp) / "store")
        print(f"  on disk: {size / 2**20:.0f} MB for {raw / 2**20:.0f} MB of raw vectors ({size / raw:.2f}x; blobs + SQLite index incl. a search copy)")


if __name__ == "__main__":
    main()
