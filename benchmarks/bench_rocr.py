"""ROCR on SmolLM2: the one-time preserved-key statistics, then one edit with them cached.

Target (issue 15): one edit <= 10 s on the 2-core machine once the statistics are cached. The
peer measured in the same run is a plain forward of the six chat-templated key prompts, so
the ratio says how many such forwards an edit costs. The breakdown times the parts of an edit
separately: the batched reads (one forward per edit layer plus one for the final keys), the
closed-form factor as computed (Sherman-Morrison, no solve without earlier edits) and the
reference's dense formula it replaced (a d_mlp x d_mlp product and solve per layer).
"""

from __future__ import annotations

import os
import time

import conceptkit as ck
from benchmarks._timing import interleaved, report


def main() -> None:
    from conceptkit_rocr.config import RocrConfig
    from conceptkit_rocr.edit import key_site, read_rows, resid_site, subject_rows
    from conceptkit_rocr.method import ROCR
    from conceptkit_rocr.solve import rocr_key_factor, rocr_key_factor_dense
    from conceptkit_rocr.stats import clear_cache
    from conceptkit_rocr.templates import context_templates

    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
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
    ctx, _ = context_templates(model.tokenizer)
    prompts = [t.replace("{}", "Albert Einstein.") for t in ctx]
    rows = subject_rows(model, ctx, "Albert Einstein") + subject_rows(model, ["{}"], "Albert Einstein")
    edit = rocr._edit(model, cfg, stats, cfg.layers)
    f0 = edit.factors[0]
    P = stats[f0.layer].projector.P
    times = interleaved({
        "plain forward, 6 templated prompts": lambda: model.run(prompts),
        "one ROCR edit (stats cached)": lambda: rocr._edit(model, cfg, stats, cfg.layers),
        "  part: 4 batched reads (edit's forwards)": lambda: [read_rows(model, rows, [key_site(6), resid_site(6)]) for _ in range(4)],
        "  part: 3 factors (Sherman-Morrison)": lambda: [rocr_key_factor(f0.key, P, None, 1.0) for _ in range(3)],
        "  part: 3 factors (dense formula, before)": lambda: [rocr_key_factor_dense(f0.key, P, None, 1.0) for _ in range(3)],
    }, repeats=3)
    report("ROCR edit on SmolLM2 (layers 4-6):", times, "plain forward, 6 templated prompts")
    t = times["one ROCR edit (stats cached)"]
    print(f"  one edit: {t:.2f} s (target <= 10 s): {'ok' if t <= 10 else 'MISSED'}")
    print(f"load average after (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
