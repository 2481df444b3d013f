"""Measure TCAV's concept-vs-random table on SmolLM2-135M (issue 13's acceptance claim).

At the demo's layer (``blocks.18.hook_resid_post``), with the template ``"Review: {}\\nSentiment:"``
and the objective ``logit(" positive") - logit(" negative")`` over the shipped
``review_targets_positive``, under the default test, for the shipped sentiment and topic sets and
for the plugin's sentiment-neutral topic sets (``tests/data``). Three runs:

1. default settings, **empty cache** (a fresh cache folder): the time of a first run;
2. the same again: the time of a run that reuses the cache (the table must be identical);
3. ``statistic: score`` (the sign-score statistic), from the cache, for comparison.

Then the model's own reading of each set: the objective evaluated on the set's examples under the
same template (mean logit difference), which shows whether a "topic" set carries sentiment.

Writes ``results/smollm2.json`` and ``results/smollm2.md`` beside this script's folder.

    .venv/bin/python plugins/tcav/scripts/measure_smollm2.py            # ~10-25 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
TEMPLATE = "Review: {}\nSentiment:"
OBJECTIVE = {"kind": "logit_diff", "positive": " positive", "negative": " negative"}
SITE = "blocks.18.hook_resid_post"
SHIPPED = ["positive_sentiment", "negative_sentiment", "topic_food", "topic_sport"]
NEUTRAL = ["topic_food_neutral", "topic_sport_neutral"]


def neutral_set(name: str) -> dict:
    lines = (PLUGIN / "tests" / "data" / f"{name}.txt").read_text().splitlines()
    return {"name": name, "examples": [x for x in lines if x.strip() and not x.startswith("#")]}


def table(result) -> list[dict]:
    return [
        {
            "concept": r.concept, "score": r.mean, "score_std": r.std, "direction": r.direction if r.tested else "",
            "p_value": r.p_value if r.tested else None, "p_greater": r.p_greater, "p_less": r.p_less,
            "significant": r.significant, "tested": r.tested, "test_note": r.test_note,
            "cosine_mean": r.cosine_mean, "cav_accuracy": r.cav_accuracy, "cav_accuracy_min": r.cav_accuracy_min,
            "dropped_concept": f"{r.n_chance_cavs}/{r.n_runs}",
            "dropped_random": f"{r.random_side.get('n_dropped', 0)}/{r.random_side.get('n_cavs', 0)}",
            "replays_gated": f"{r.random_side.get('n_gated', 0)}/{r.random_side.get('n_replays', 0)}",
            "null_score": [r.random_side.get("mean"), r.random_side.get("std")],
            "null_statistic": [r.random_side.get("statistic_mean"), r.random_side.get("statistic_std")],
        }
        for r in result.rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-null", type=int, default=200)
    parser.add_argument("--cache-root", default=None, help="TCAV cache folder for the timed runs (default: a fresh temporary one)")
    parser.add_argument("--out", default=str(PLUGIN / "results"))
    args = parser.parse_args()

    import torch

    import conceptkit as ck
    from conceptkit import concepts
    from conceptkit.objectives import token_id
    from conceptkit_tcav import cache

    root = Path(args.cache_root) if args.cache_root else Path(tempfile.mkdtemp(prefix="tcav-cache-"))
    cache.cache_root = lambda: root  # the timed first run starts from an empty cache
    t0 = time.perf_counter()
    model = ck.load_model("smollm2-135m", backend="transformer_lens")
    load_s = time.perf_counter() - t0
    targets = list(concepts.load("review_targets_positive").examples)
    config = {
        "concepts": SHIPPED + [neutral_set(n) for n in NEUTRAL], "targets": targets, "target_template": TEMPLATE,
        "objective": OBJECTIVE, "sites": [SITE], "n_null": args.n_null,
    }
    runs = {}
    for label, extra in [("first", {}), ("second", {}), ("score_statistic", {"statistic": "score"})]:
        t = time.perf_counter()
        result = ck.method("tcav").run(model, dict(config, **extra))
        runs[label] = {"seconds": time.perf_counter() - t, "table": table(result), "summary": result.summary(),
                       "conventions": {k: v for k, v in result.conventions.items() if k not in ("random_sets",)}}
        print(f"== {label}: {runs[label]['seconds']:.0f} s\n{result.summary()}", flush=True)
    same = json.dumps(runs["first"]["table"], sort_keys=True) == json.dumps(runs["second"]["table"], sort_keys=True)

    # The model's own reading of each set under the template (the objective on the examples themselves).
    a, b = token_id(model, " positive"), token_id(model, " negative")
    reading = {}
    sets = {n: list(concepts.load(n).examples) for n in SHIPPED + ["neutral"]}
    sets.update({n: neutral_set(n)["examples"] for n in NEUTRAL})
    for name, examples in sets.items():
        if len(examples) > 200:
            examples = examples[:: len(examples) // 200][:200]
        logits = model.run([TEMPLATE.format(e) for e in examples], batch_size=16)
        d = (logits[:, a] - logits[:, b]).double()
        reading[name] = {"n": len(examples), "mean": float(d.mean()), "std": float(d.std()), "frac_positive": float((d > 0).double().mean())}

    out = {
        "command": "python plugins/tcav/scripts/measure_smollm2.py" + (f" --n-null {args.n_null}" if args.n_null != 200 else ""),
        "model": "smollm2-135m (transformer_lens)", "site": SITE, "template": TEMPLATE, "objective": OBJECTIVE,
        "targets": "review_targets_positive (40)", "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "torch_threads": torch.get_num_threads(), "load_seconds": load_s,
        "first_run_seconds": runs["first"]["seconds"], "second_run_seconds": runs["second"]["seconds"],
        "second_run_table_identical": same, "cache_root": str(root), "runs": runs, "model_reading": reading,
    }
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "smollm2.json").write_text(json.dumps(out, indent=1))
    (dest / "smollm2.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    def fmt_p(p):
        return "-" if p is None else f"{p:.4f}"

    lines = [
        "# TCAV on SmolLM2-135M: concept vs random (measured)", "",
        f"Command: `{out['command']}`. Site `{out['site']}`, template `{out['template']!r}`, objective logit(' positive') - "
        f"logit(' negative'), targets {out['targets']}, {out['machine']}, torch threads {out['torch_threads']}.", "",
        f"Time: first run (empty cache) {out['first_run_seconds']:.0f} s; second run reusing the cache "
        f"{out['second_run_seconds']:.0f} s (table identical: {out['second_run_table_identical']}); model load {out['load_seconds']:.0f} s.", "",
    ]
    for label, title in [("first", "Default test (monte_carlo, statistic cosine)"), ("score_statistic", "Same data, statistic score (sign score, ties by magnitude)")]:
        run = out["runs"][label]
        lines += [f"## {title}", "", run["conventions"].get("statistic", "") + ". 'null statistic': the replays' value of this "
                  "statistic (mean cosine, or mean sign score).", "",
                  "| concept | score | direction | p | sig | mean cos(grad, CAV) | null statistic (mean ± sd) | CAV acc | dropped concept | dropped random | replays gated |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["table"]:
            nc = r["null_statistic"]
            lines.append(
                f"| {r['concept']} | {r['score']:.3f} | {r['direction'] or '-'} | {fmt_p(r['p_value'])} | {'yes' if r['significant'] else 'no'} | "
                f"{r['cosine_mean']:+.4f} | {nc[0]:+.4f} ± {nc[1]:.4f} | {r['cav_accuracy']:.3f} | {r['dropped_concept']} | {r['dropped_random']} | {r['replays_gated']} |"
            )
        lines.append("")
    lines += ["## The model's reading of each set", "",
              "logit(' positive') - logit(' negative') at the template's last token, on the set's own examples:", "",
              "| set | n | mean | sd | fraction > 0 |", "|---|---|---|---|---|"]
    for name, r in out["model_reading"].items():
        lines.append(f"| {name} | {r['n']} | {r['mean']:+.3f} | {r['std']:.3f} | {r['frac_positive']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
