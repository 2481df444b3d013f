"""Measure ROCR and the gradient-ascent baseline on SmolLM2-135M across forms (issue 15).

    OMP_NUM_THREADS=2 .venv/bin/python plugins/rocr/scripts/measure_smollm2.py --out rocr-measure

1. Which shipped entities does the unedited model know? "Known" (fixed before any edit): the
   greedy answer is right (top-1 on every answer token) in the training form ``fill_blank`` and
   in at least one other generated form (qa, paraphrase_1, paraphrase_2).
2. For each known entity: the ROCR edit to the harmless concept (statistics computed once and
   cached in the store under --out), evaluated before/after on all five forms, the neighbours,
   KL on unrelated text and fluency; then gradient ascent on the fill_blank form only
   (``--ga-lr``, ``--ga-steps``), evaluated the same way.
3. Aggregates (pooled over entities and forms) against the issue's targets, a table
   (``report.md``), the raw numbers (``results.json``) and a plot (``forms.png``).
Control: the fill_blank answer's probability with the entity's name replaced by the harmless
concept (what a perfect redirection would leave).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import conceptkit as ck
from conceptkit_rocr.baseline import gradient_ascent
from conceptkit_rocr.config import RocrConfig
from conceptkit_rocr.evaluate import FORMS, evaluate, format_prompt, forms_data
from conceptkit_rocr.method import ROCR
from conceptkit_rocr.result import plot_forms
from conceptkit_rocr.scoring import score_answers

GENERATED = ["qa", "paraphrase_1", "paraphrase_2"]


def _mean(values):
    values = [v for v in values if v == v]  # fluency is measured on the first entities only
    return sum(values) / len(values) if values else float("nan")


def rows_of(evs, which, forms=None, right_before=False):
    """Pooled rows; ``right_before`` keeps only items the unedited model answered right (top-1)."""
    return [r for e in evs for r in getattr(e, which) if (forms is None or r.form in forms) and (r.top1_before or not right_before)]


def pooled(evs, which, when, forms=None, right_before=False):
    rows = rows_of(evs, which, forms, right_before)
    return sum(getattr(r, f"prob_{when}") for r in rows) / max(len(rows), 1)


def drop(evs, forms=None, right_before=False):
    b = pooled(evs, "forms", "before", forms, right_before)
    return 1 - pooled(evs, "forms", "after", forms, right_before) / b if b > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="rocr-measure")
    ap.add_argument("--harmless", default="John Smith")
    ap.add_argument("--layers", default="4,5,6")
    ap.add_argument("--ga-lr", type=float, default=2e-5)
    ap.add_argument("--ga-steps", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="at most this many known entities")
    ap.add_argument("--backend", default="transformers", help="the plain HF backend is the lightest on a busy CPU")
    ap.add_argument("--fluency-entities", type=int, default=3, help="generate (fluency) for the first N entities only")
    ap.add_argument("--entities", default=None, help="';'-separated names to measure (default: every known entity)")
    ap.add_argument("--store", default=None, help="store folder for the cached statistics (default: OUT/store)")
    ap.add_argument("--merge", nargs="*", default=None, help="only aggregate the results.json of these output folders into --out")
    ap.add_argument("--kl-texts", type=int, default=20, help="unrelated texts for KL")
    ap.add_argument("--templates", default="auto", help="ROCR key contexts: auto (chat when the tokenizer has one), chat or plain")
    ap.add_argument("--value-context", default="bare", help="ROCR value context: bare (reference) or templates")
    ap.add_argument("--eval-format", default="plain", choices=["plain", "chat", "chat_instruct", "chat_restate"],
                    help="how forms and neighbours are asked: plain text, or the chat template's user turn + 'Answer:' (the reference's evaluation)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "a")

    def say(*a):
        line = " ".join(str(x) for x in a)
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    if args.merge is not None:
        return merge(out, args, say)
    model = ck.load_model("smollm2-135m", backend=args.backend)
    store = ck.open_store(args.store or out / "store")
    layers = [int(x) for x in args.layers.split(",")]
    rocr = ROCR()

    # 1. which entities does the model know?
    ents = forms_data()["entities"]
    rows = [(e["forms"][f]["prompt"], e["forms"][f]["answer"]) for e in ents for f in FORMS]
    opts = [e["forms"][f].get("options") for e in ents for f in FORMS]
    scores = score_answers(model, rows, options=opts)
    known = []
    for i, e in enumerate(ents):
        s = dict(zip(FORMS, scores[i * len(FORMS) : (i + 1) * len(FORMS)]))
        ok = s["fill_blank"].top1 and any(s[f].top1 for f in GENERATED)
        say(f"{'KNOWN ' if ok else 'unknown'} {e['name']:<26} " + " ".join(f"{f}={s[f].prob:.2f}/{int(s[f].top1)}" for f in FORMS))
        if ok:
            known.append(e["name"])
    if args.entities:
        wanted = args.entities.split(";")
        known = [n for n in known if n in wanted]
    if args.limit:
        known = known[: args.limit]
    say(f"{len(known)} known entities: {known}")
    say(f"(known entities are chosen in plain text whatever --eval-format; evaluation format: {args.eval_format})")
    control_rows = [(format_prompt(model.tokenizer, e["forms"]["fill_blank"]["prompt"].replace(e["name"], args.harmless), args.eval_format), e["forms"]["fill_blank"]["answer"]) for e in ents if e["name"] in known]
    control = {n: s.prob for n, s in zip(known, score_answers(model, control_rows))}

    # 2. statistics once, then one edit per entity
    base = dict(harmless=args.harmless, layers=layers, templates=args.templates, value_context=args.value_context)
    t0 = time.perf_counter()
    stats = rocr._stats(model, RocrConfig(target=known[0], **base), layers, store)
    stats_seconds = time.perf_counter() - t0
    say(f"statistics: {stats_seconds:.1f} s; " + "; ".join(f"layer {l}: {s.n_tokens} tokens, rank {s.projector.key_rank}, null dim {s.projector.null_dim}, tau {s.projector.tau:g}, source {s.source}" for l, s in stats.items()))
    results = {"harmless": args.harmless, "layers": layers, "templates": args.templates, "value_context": args.value_context, "eval_format": args.eval_format, "texts_fingerprint": next(iter(stats.values())).texts_fingerprint, "ga_lr": args.ga_lr, "ga_steps": args.ga_steps, "stats_seconds": stats_seconds,
               "stats": {l: dict(n_tokens=s.n_tokens, key_rank=s.projector.key_rank, null_dim=s.projector.null_dim, tau=s.projector.tau) for l, s in stats.items()},
               "known": known, "control_fill_blank_with_harmless": control, "entities": {}}
    evs_rocr, evs_ga = [], []
    for name in known:
        cfg = RocrConfig(target=name, **base)
        t = time.perf_counter()
        edit = rocr._edit(model, cfg, stats, layers)
        edit_s = time.perf_counter() - t
        fl = len(evs_rocr) < args.fluency_entities
        unrelated = forms_data()["unrelated"][: args.kl_texts]
        ev = evaluate(model, name, lambda: edit.apply(model), method="rocr", max_new_tokens=16, fluency=fl, unrelated=unrelated, eval_format=args.eval_format)
        form = next(e for e in ents if e["name"] == name)["forms"]["fill_blank"]
        t = time.perf_counter()
        ga = gradient_ascent(model, [(form["prompt"], form["answer"])], lr=args.ga_lr, steps=args.ga_steps)
        ga_s = time.perf_counter() - t
        ev_ga = evaluate(model, name, lambda: ga.apply(model), method="gradient_ascent", max_new_tokens=16, before=ev._before, fluency=fl, unrelated=unrelated, eval_format=args.eval_format)
        evs_rocr.append(ev)
        evs_ga.append(ev_ga)
        results["entities"][name] = {"rocr": ev.model_dump(), "gradient_ascent": ev_ga.model_dump(), "edit_seconds": edit_s, "ga_seconds": ga_s,
                                     "residual_norms": [f.residual_norm for f in edit.factors], "residual_after": edit.info["residual_after"], "ga_nll_per_step": ga.nll_per_step}
        say(f"{name:<26} rocr: drop {ev.relative_drop():.0%} (train form {ev.relative_drop(['fill_blank']):.0%}, paraphrases {ev.relative_drop(['paraphrase_1', 'paraphrase_2']):.0%}), "
            f"neighbours kept {ev.neighbour_kept():.0%}, KL {ev.kl_unrelated:.4f}, edit {edit_s:.1f} s | GA: drop {ev_ga.relative_drop():.0%} "
            f"(train {ev_ga.relative_drop(['fill_blank']):.0%}, paraphrases {ev_ga.relative_drop(['paraphrase_1', 'paraphrase_2']):.0%}), kept {ev_ga.neighbour_kept():.0%}, KL {ev_ga.kl_unrelated:.4f}")
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

        report(out, results, evs_rocr, evs_ga, args, say, final=name == known[-1])


def merge(out, args, say):
    """Aggregate several partial runs (parallel workers on disjoint entities) into one report."""
    from conceptkit_rocr.evaluate import Evaluation

    merged, evs_rocr, evs_ga = None, [], []
    for folder in args.merge:
        part = json.loads((Path(folder) / "results.json").read_text())
        if merged is None:
            merged = {**part, "entities": {}, "known": []}
        merged["control_fill_blank_with_harmless"].update(part["control_fill_blank_with_harmless"])
        for name, row in part["entities"].items():
            if name in merged["entities"]:
                continue
            merged["entities"][name] = row
            evs_rocr.append(Evaluation.model_validate(row["rocr"]))
            evs_ga.append(Evaluation.model_validate(row["gradient_ascent"]))
    merged["merged_from"] = list(args.merge)
    report(out, merged, evs_rocr, evs_ga, args, say, final=True)


def report(out, results, evs_rocr, evs_ga, args, say, final):
    """Aggregates over the entities done so far: report.md, results.json, forms.png."""
    known = list(results["entities"])
    layers, stats_seconds, control = results["layers"], results["stats_seconds"], results["control_fill_blank_with_harmless"]
    lines = [f"# ROCR vs gradient ascent on SmolLM2-135M-Instruct ({len(known)} entities, harmless concept {args.harmless!r}, layers {layers}, "
             f"key templates {results.get('templates', 'auto')}, value context {results.get('value_context', 'bare')}, evaluation format {results.get('eval_format', 'plain')})", "",
             f"Statistics (one-time): {stats_seconds:.1f} s. GA: Adam lr {args.ga_lr}, {args.ga_steps} steps on the fill_blank form, every MLP weight.", "",
             "| method | form | mean prob before | after | relative drop | top-1 before | top-1 after |", "|---|---|---|---|---|---|---|"]
    agg = {}
    for label, evs in (("rocr", evs_rocr), ("gradient_ascent", evs_ga)):
        for f in FORMS + ["all forms", "paraphrases", "right before (top-1)"]:
            fs = FORMS if f in ("all forms", "right before (top-1)") else ["paraphrase_1", "paraphrase_2"] if f == "paraphrases" else [f]
            rb = f == "right before (top-1)"
            rows_ = rows_of(evs, "forms", fs, rb)
            t1b = sum(r.top1_before for r in rows_) / len(rows_) if rows_ else float("nan")  # no item right before: nothing to restrict to
            t1a = sum(r.top1_after for r in rows_) / len(rows_) if rows_ else float("nan")
            name = f"{f}, n={len(rows_)}" if rb else f
            lines.append(f"| {label} | {name} | {pooled(evs, 'forms', 'before', fs, rb):.3f} | {pooled(evs, 'forms', 'after', fs, rb):.3f} | {drop(evs, fs, rb):.0%} | {t1b:.2f} | {t1a:.2f} |")
        nb, na = pooled(evs, "neighbours", "before"), pooled(evs, "neighbours", "after")
        agg[label] = dict(drop_all=drop(evs), drop_right_before=drop(evs, None, True), drop_train=drop(evs, ["fill_blank"]), drop_paraphrases=drop(evs, ["paraphrase_1", "paraphrase_2"]),
                          neighbours_kept=na / nb if nb else float('nan'), kl=sum(e.kl_unrelated for e in evs) / len(evs), kl_max=max(e.kl_unrelated for e in evs),
                          fluency_before=_mean([e.fluency_before for e in evs]), fluency_after=_mean([e.fluency_after for e in evs]))
        lines.append(f"| {label} | neighbours | {nb:.3f} | {na:.3f} | kept {na / nb if nb else float('nan'):.0%} | | |")
    lines += ["", "| method | drop all forms (target ≥70%) | forms right before only | training form | paraphrases | neighbours kept (≥90%) | KL nats/token mean (max) (≤0.01) | fluency before → after |", "|---|---|---|---|---|---|---|---|"]
    for label, a in agg.items():
        lines.append(f"| {label} | {a['drop_all']:.0%} | {a['drop_right_before']:.0%} | {a['drop_train']:.0%} | {a['drop_paraphrases']:.0%} | {a['neighbours_kept']:.0%} | {a['kl']:.4f} ({a['kl_max']:.4f}) | {a['fluency_before']:.2f} → {a['fluency_after']:.2f} |")
    edit_times = [results["entities"][n]["edit_seconds"] for n in known]
    lines += ["", f"ROCR edit time per entity (statistics cached): median {sorted(edit_times)[len(edit_times) // 2]:.1f} s, max {max(edit_times):.1f} s.",
              "", "Control: fill_blank answer probability with the name replaced by the harmless concept: "
              + ", ".join(f"{n} {control[n]:.3f}" for n in known)]
    lines += ["", "Per entity (ROCR | gradient ascent): drop over all forms, training form, paraphrases; neighbours kept; ROCR edit seconds; ‖z−h‖ before → after",
              "", "| entity | ROCR all | train | para | kept | GA all | train | para | kept | edit s | ‖z−h‖ |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for er, eg in zip(evs_rocr, evs_ga):
        row = results["entities"].get(er.entity, {})
        cells = [f"{x:.0%}" if x == x else "–" for e in (er, eg) for x in (e.relative_drop(), e.relative_drop(["fill_blank"]), e.relative_drop(["paraphrase_1", "paraphrase_2"]), e.neighbour_kept())]
        resid = row.get("residual_norms", [float("nan")])[0], row.get("residual_after", float("nan"))
        lines.append(f"| {er.entity} | " + " | ".join(cells) + f" | {row.get('edit_seconds', float('nan')):.1f} | {resid[0]:.0f} → {resid[1]:.0f} |")
    results["aggregate"] = agg
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_forms(evs_rocr + evs_ga, out / "forms.png")
    if final:
        say("\n".join(lines))


if __name__ == "__main__":
    main()
