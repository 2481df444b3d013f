"""ROCR on SmolLM2: the one-time preserved-key statistics, then one edit with them cached.

Target (issue 15): one edit <= 10 s on the 2-core machine once the statistics are cached. The
peer measured in the same run is a plain forward of the six chat-templated key prompts, so
the ratio says how many such forwards an edit costs (keys, values and the three solves).
"""

from __future__ import annotations

import time

import conceptkit as ck
from benchmarks._timing import interleaved, report


def main() -> None:
    from conceptkit_rocr.config import RocrConfig
    from conceptkit_rocr.method import ROCR
    from conceptkit_rocr.stats import clear_cache
    from conceptkit_rocr.templates import context_templates

    model = ck.load_model("smollm2-135m", backend="transformer_lens")
    rocr = ROCR()
    cfg = RocrConfig(target="Albert Einstein", harmless="John Smith", layers=[4, 5, 6])
    clear_cache()
    t0 = time.perf_counter()
    stats = rocr._stats(model, cfg, cfg.layers, None)
    first = time.perf_counter() - t0
    s = next(iter(stats.values()))
    print(f"statistics (one-time, 3 layers, {s.n_tokens} tokens, eigendecompositions included): {first:.1f} s")
    t0 = time.perf_counter()
    rocr._stats(model, cfg, cfg.layers, None)
    print(f"statistics again (in-memory cache): {(time.perf_counter() - t0) * 1000:.1f} ms")
    prompts = [t.replace("{}", "Albert Einstein.") for t in context_templates(model.tokenizer)[0]]
    times = interleaved({
        "plain forward, 6 templated prompts": lambda: model.run(prompts),
        "one ROCR edit (stats cached)": lambda: rocr._edit(model, cfg, stats, cfg.layers),
    }, repeats=3)
    report("ROCR edit on SmolLM2 (layers 4-6):", times, "plain forward, 6 templated prompts")
    edit = times["one ROCR edit (stats cached)"]
    print(f"  one edit: {edit:.2f} s (target <= 10 s): {'ok' if edit <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
