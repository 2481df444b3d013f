"""Write ``results/README.md`` from the study's JSON files (``results.json`` or ``results_<section>.json``).

    .venv/bin/python plugins/obsprop/scripts/summarize.py [--out plugins/obsprop/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(out: Path) -> dict:
    data: dict = {}
    if (out / "results.json").exists():
        data.update(json.loads((out / "results.json").read_text()))
    for section in ("rankings", "coupling", "lowdata", "parity"):
        f = out / f"results_{section}.json"
        if f.exists():
            data.update(json.loads(f.read_text()))
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    ap.add_argument("--pairs", type=int, default=12, help="prompt pairs per task the rankings were run with")
    args = ap.parse_args()
    out = Path(args.out)
    r = load(out)
    lines = ["# ObsProp on SmolLM2-135M-Instruct: measurements", "",
             "Produced by `plugins/obsprop/scripts/smollm2_study.py` (sections run as parallel processes with "
             "`--section rankings|coupling|lowdata|parity`), summarised by `scripts/summarize.py`. "
             "Observables: subject `' she' - ' he'`, object `' her' - ' him'`. Prompts: the shipped names and templates. "
             f"Path patching: mean over {args.pairs} (female, male) prompt pairs per task, cycling through the three templates.", ""]
    if "rankings" in r:
        for task, t in r["rankings"].items():
            lines += [f"## Head rankings, {task}", "",
                      "| # | data-free (feature norm) | with norm factors | path patching (mean OV-only effect) |", "|---|---|---|---|"]
            for i in range(10):
                a, b, p = t["data_free"][i], t["data_free_with_norms"][i], t["path_patching"][i]
                lines.append(f"| {i + 1} | {a[0]}.{a[1]} ({a[2]:.2f}) | {b[0]}.{b[1]} ({b[2]:.3f}) | {p[0]}.{p[1]} ({p[2]:.3f}) |")
            s = r.get("path_search", {}).get(task)
            if s:
                lines += ["", f"Greedy path search on `{s['prompt_pair'][0]}` / `{s['prompt_pair'][1]}` ({s['seconds']:.1f} s):", ""]
                for level, paths in enumerate(s["paths"], 1):
                    lines.append(f"* length {level}: " + "; ".join(f"`{q['label']}` ({q['contrib']:.3f})" for q in paths[:3]))
            lines.append("")
    if "cosines" in r:
        c = r["cosines"]
        lines += ["## Subject vs object features at the top-5 heads", "",
                  f"Raw observables after the unembedding: cosine **{c['raw_observables']:.4f}** "
                  f"(after the final norm's gain: {c['raw_observables_after_ln_f_gain']:.4f}).", "",
                  "| ranking | head | cosine | cosine with norm factors |", "|---|---|---|---|"]
        for h in c["heads"]:
            lines.append(f"| {h['ranking']} | {h['layer']}.{h['head']} | {h['cosine']:.4f} | {h['cosine_with_norms']:.4f} |")
        lines.append("")
    if "coupling" in r:
        c = r["coupling"]
        merged = f", {r['shards_merged']} shards" if r.get("shards_merged") else ""
        lines += [f"## Coupling subject → object: predicted vs measured ({c['n_tokens']} tokens, {c['corpus']}{merged})", "",
                  "Features scored at `blocks.{l}.hook_resid_pre` on every token of 128-token windows; slope and r² of the "
                  "least-squares line of object scores on subject scores. Paper (GPT-Neo-1.3B, head 17.14): C 0.71 (with norm factors), slope 0.77.", "",
                  "| head | C (no norms) | slope | r² | C (with norm factors) | slope | r² | slope without each window's first token | r² |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for h in c["heads"]:
            f0, f1, f2 = h["fit_raw"], h["fit_ln"], h["fit_ln_without_first_token"]
            lines.append(f"| {h['layer']}.{h['head']} | {h['C_raw']:.3f} | {f0['slope']:.3f} | {f0['r2']:.3f} | {h['C_ln']:.3f} | "
                         f"{f1['slope']:.3f} | {f1['r2']:.3f} | {f2['slope']:.3f} | {f2['r2']:.3f} |")
        lines += ["", "Plots: " + ", ".join(f"`{Path(h['plot']).name}`" for h in c["heads"] if "plot" in h), ""]
    if "low_data" in r:
        for task, t in r["low_data"].items():
            lines += [f"## Low-data comparison, {task}", "",
                      f"{t['n_train']} labelled training prompts (10 female + 10 male names, first template) for the baselines; "
                      f"{t['n_held_out']} held-out prompts (other names, all templates; {100 * t['fraction_positive']:.0f}% with a "
                      "positive logit difference). Score at the name token against the model's logit difference at the last token.", "",
                      "| head | method | Pearson r | AUC (sign) |", "|---|---|---|---|"]
            for row in t["rows"]:
                lines.append(f"| {row['layer']}.{row['head']} | {row['method']} | {row['pearson_r']:.3f} | {row['auc_sign']:.3f} |")
            lines.append("")
    if "parity" in r:
        lines += ["## Backend parity (max abs difference, TransformerLens vs nnsight)", ""]
        lines += [f"* {k}: {v:.2e}" for k, v in r["parity"].items()] + [""]
    (out / "README.md").write_text("\n".join(lines))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
