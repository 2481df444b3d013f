"""Streaming capture keeps memory flat: peak RSS for 5,000 vs 500 prompts (every token, 4 sites).

Each run is a fresh process (peak RSS is per process). Kept in memory, the 5,000-prompt
activations alone would be 5,000 x ~32 tokens x 4 sites x 576 x 4 bytes = ~1.5 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, torch
import conceptkit as ck
from benchmarks.bench_capture import prompts
n = int(sys.argv[1]); out = sys.argv[2]
base = prompts()
texts = [base[i % 64] + f" {i}" for i in range(n)]
model = ck.load_model("smollm2-135m", backend="nnsight")
torch.set_num_threads(2)
sites = [f"blocks.{l}.hook_resid_post" for l in (5, 10, 15, 20)]
t0 = time.perf_counter()
acts = model.capture(texts, sites, reduce="all", batch_size=32, stream_to=out, shard_mb=64)
elapsed = time.perf_counter() - t0
rows = sum(s.shape[0] for s in acts.iter_shards(sites[0]))
print(json.dumps({"n": n, "rows": rows, "seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bytes_on_disk_mb": rows * 4 * 576 * 4 / 2**20}))
"""


def run(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    small, large = run(500), run(5000)
    for r in (small, large):
        print(f"  {r['n']:>5} prompts: {r['rows']:>7} token rows x 4 sites ({r['bytes_on_disk_mb']:.0f} MB streamed) "
              f"in {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  peak RSS ratio 5,000 / 500 = {large['peak_rss_mb'] / small['peak_rss_mb']:.3f}x  (target <= 1.2)")


if __name__ == "__main__":
    main()
