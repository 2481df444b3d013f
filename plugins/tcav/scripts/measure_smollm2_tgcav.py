"""Measure per-layer TCAV and TGCAV scores for positive sentiment on SmolLM2-135M (issue 13, item 6).

Sites ``blocks.{6,9,...,24}.hook_resid_post`` (every third layer from 6 to 24: 7 layers), the
demo's template and objective, targets ``review_targets_positive``, plain TCAV against random sets
from the first ``--pool`` sentences of the shipped neutral pool, the default probe and test
(``n_null`` replays per layer). TGCAV with the plugin's defaults (identity dim_align, no
InfoNCE alignment, attention fusion) twice: with the non-degeneracy term (``sep_weight`` 3,
the default) and without it (``sep_weight`` 0, the reference's loss). Stability statistics
(mean, population Std, CV, RR) over the per-layer mean scores.

Writes ``results/smollm2_tgcav.json`` and ``.md``.

    .venv/bin/python plugins/tcav/scripts/measure_smollm2_tgcav.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent.parent
TEMPLATE = "Review: {}\nSentiment:"
OBJECTIVE = {"kind": "logit_diff", "positive": " positive", "negative": " negative"}
LAYERS = list(range(6, 25, 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--n-null", type=int, default=100)
    parser.add_argument("--concept", default="positive_sentiment")
    parser.add_argument("--out", default=str(PLUGIN / "results"))
    args = parser.parse_args()

    import conceptkit as ck
    from conceptkit import concepts

    model = ck.load_model("smollm2-135m", backend="transformer_lens")
    sites = [f"blocks.{l}.hook_resid_post" for l in LAYERS]
    config = {
        "concepts": [args.concept], "targets": list(concepts.load("review_targets_positive").examples),
        "target_template": TEMPLATE, "objective": OBJECTIVE, "sites": sites,
        "random_pool": list(concepts.load("neutral").examples)[: args.pool], "n_null": args.n_null,
    }
    out: dict = {"command": f"python plugins/tcav/scripts/measure_smollm2_tgcav.py --pool {args.pool} --n-null {args.n_null}",
                 "layers": LAYERS, "concept": args.concept, "runs": {}}
    for label, tg in [("sep_weight_3", {}), ("sep_weight_0", {"sep_weight": 0.0})]:
        t = time.perf_counter()
        result = ck.method("tcav").run(model, dict(config, tgcav=tg))
        g = result.tgcav[args.concept]
        out["runs"][label] = {
            "seconds": time.perf_counter() - t, "tcav": g["tcav"], "tgcav": g["tgcav"], "statistics": g["statistics"],
            "accuracy_tcav": g["accuracy_tcav"], "accuracy_tgcav": g["accuracy_tgcav"], "settings": g["settings"],
            "rows": [{"site": r.site, "score": r.mean, "direction": r.direction, "p_value": r.p_value if r.tested else None,
                      "significant": r.significant, "cav_accuracy": r.cav_accuracy, "cosine_mean": r.cosine_mean} for r in result.rows],
        }
        print(f"== {label} ({out['runs'][label]['seconds']:.0f} s)\n{result.summary()}", flush=True)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "smollm2_tgcav.json").write_text(json.dumps(out, indent=1))
    (dest / "smollm2_tgcav.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    a, b = out["runs"]["sep_weight_3"], out["runs"]["sep_weight_0"]
    lines = [
        f"# TCAV vs TGCAV across layers on SmolLM2-135M: {out['concept']} (measured)", "",
        f"Command: `{out['command']}`. Layers {out['layers']} (every third layer from 6 to 24), template 'Review: {{}}\\nSentiment:', "
        "objective logit(' positive') - logit(' negative'), targets review_targets_positive (40), default probe (mean_diff) and test. "
        "TGCAV: identity dim_align, no alignment, attention fusion; with the non-degeneracy term (sep_weight 3, default) and "
        "without it (sep_weight 0, the reference's loss). Accuracy: midpoint-rule concept-vs-random accuracy on the examples used "
        "(resubstitution), of the layer's own CAVs / of the decoded global CAV.", "",
        "| layer | TCAV score | p (default test) | TGCAV (sep 3) | TGCAV (sep 0) | acc layer CAVs | acc global (sep 3) | acc global (sep 0) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, layer in enumerate(out["layers"]):
        row = a["rows"][i]
        p = "-" if row["p_value"] is None else f"{row['p_value']:.3f} {row['direction']}"
        lines.append(f"| {layer} | {a['tcav'][i]:.3f} | {p} | {a['tgcav'][i]:.3f} | {b['tgcav'][i]:.3f} | {a['accuracy_tcav'][i]:.3f} | "
                     f"{a['accuracy_tgcav'][i]:.3f} | {b['accuracy_tgcav'][i]:.3f} |")
    lines += ["", "| scores | mean | Std | CV | RR |", "|---|---|---|---|---|"]
    for name, st in [("TCAV", a["statistics"]["tcav"]), ("TGCAV, sep_weight 3", a["statistics"]["tgcav"]), ("TGCAV, sep_weight 0", b["statistics"]["tgcav"])]:
        lines.append(f"| {name} | {st['mean']:.3f} | {st['std']:.3f} | {st['cv']:.3f} | {st['rr']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
