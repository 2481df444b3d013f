"""Scale-out: capture throughput over Ray workers vs one process; the nnsight trace executor vs a
raw nnsight trace.

Part 1 captures ``blocks.15.hook_resid_post`` (last token) of N prompts of ~30 tokens on SmolLM2
(transformers backend) in one process, then with 1 and 2 Ray workers (each holds its own copy of
the model; pools are started before timing, so worker start-up is excluded and reported apart).
N defaults to 400 (issue 18 asks 5,000; set CONCEPTKIT_BENCH_SCALE_N=5000 for that; at ~1 s per
batch of 16 on this shared 2-core machine 5,000 prompts take minutes per contender).
Part 2 times ``model.with_executor("trace")`` capture against the same capture written by hand as
an nnsight trace (both remote=False, neither stops early), and remote="local" for its
serialisation cost. Each part interleaves its contenders.
"""

from __future__ import annotations

import os
import time

import torch

import conceptkit as ck
from benchmarks._timing import interleaved, report

SITE = "blocks.15.hook_resid_post"
MODEL = os.environ.get("CONCEPTKIT_BENCH_SCALE_MODEL", "smollm2-135m")
N = int(os.environ.get("CONCEPTKIT_BENCH_SCALE_N", "400"))
BATCH = 16


def prompts(n: int) -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while seven curious cats watch from an old wooden fence".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(26 + (i % 8))) for i in range(n)]


def ray_part() -> None:
    import ray

    from conceptkit.scale import RayCapture

    texts = prompts(N)
    local = ck.load_model(MODEL, backend="transformers")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        one = RayCapture(MODEL, "transformers", workers=1)
        two = RayCapture(MODEL, "transformers", workers=2)
        one.pids(), two.pids()
        print(f"  (Ray start-up: 3 workers loaded the model in {time.perf_counter() - t0:.1f} s, excluded below)")
        ref = local.capture(texts, SITE, "last", batch_size=BATCH, progress=False)[SITE]
        got = two.capture(texts, SITE, "last", batch_size=BATCH)[SITE]
        print(f"  2-worker result equals the single-process capture bit for bit: {torch.equal(ref, got)}")
        times = interleaved(
            {
                "single process (model.capture)": lambda: local.capture(texts, SITE, "last", batch_size=BATCH, progress=False),
                "Ray, 1 worker": lambda: one.capture(texts, SITE, "last", batch_size=BATCH),
                "Ray, 2 workers": lambda: two.capture(texts, SITE, "last", batch_size=BATCH),
            },
            repeats=int(os.environ.get("CONCEPTKIT_BENCH_SCALE_REPEATS", "2")),
            warmup=0,
        )
        report(f"capture {N} prompts ({MODEL}, {SITE}, last, batch {BATCH}) on {os.cpu_count()} CPU cores", times,
               "single process (model.capture)")
        for name, t in times.items():
            print(f"  {name:<40} {N / t:9.1f} prompts/s")
        one.close(), two.close()
    finally:
        ray.shutdown()


def trace_part() -> None:
    model = ck.load_model(MODEL, backend="nnsight")
    trace = model.with_executor("trace")
    local_sim = model.with_executor("trace", remote="local")
    nn = model.nnsight_model
    layer = int(SITE.split(".")[1])
    texts = prompts(64)
    batches = list(model.batches(texts, BATCH))

    def raw() -> list[torch.Tensor]:
        out = []
        for b in batches:
            with nn.trace({"input_ids": b.input_ids, "attention_mask": b.attention_mask, "position_ids": b.position_ids}):
                h = nn.model.layers[layer].output
                h = (h[0] if isinstance(h, tuple) else h).save()
            out.append(h[torch.arange(len(b)), b.lengths - 1].float())
        return out

    ref = torch.cat(raw())
    got = trace.capture(texts, SITE, "last", batch_size=BATCH, progress=False)[SITE]
    print(f"  trace executor equals the raw trace: max |diff| = {(ref - got).abs().max().item():.2e}")
    times = interleaved(
        {
            "raw nnsight trace": raw,
            "trace executor (remote=False)": lambda: trace.capture(texts, SITE, "last", batch_size=BATCH, progress=False),
            "trace executor (remote='local')": lambda: local_sim.capture(texts, SITE, "last", batch_size=BATCH, progress=False),
            "hook executor (default)": lambda: model.capture(texts, SITE, "last", batch_size=BATCH, progress=False),
        },
        repeats=3,
    )
    report(f"capture 64 prompts ({MODEL}, {SITE}, last, batch {BATCH}) through nnsight", times, "raw nnsight trace")


def main() -> None:
    torch.manual_seed(0)
    which = os.environ.get("CONCEPTKIT_BENCH_SCALE_PARTS", "trace,ray").split(",")
    if "trace" in which:
        trace_part()
    if "ray" in which:
        ray_part()


if __name__ == "__main__":
    main()
