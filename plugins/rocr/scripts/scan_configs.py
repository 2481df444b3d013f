"""Forgetting on SmolLM2 for several configurations of the spec's switches (issue 15 diagnosis).

    OMP_NUM_THREADS=2 .venv/bin/python plugins/rocr/scripts/scan_configs.py \\
        '{"templates":"chat","value":"bare"}' '{"templates":"plain","value":"templates"}' \\
        '{"templates":"plain","value":"bare","layers":[4,5,6,7,8]}'

Each argument is one configuration (templates, value context, z context, layers, thr/rel thresholds, l2);
for each, the 10 known entities are edited to "John Smith" and evaluated as in the report
(all five forms, neighbours, KL on the first 10 unrelated texts; no fluency, no baseline). The
moments come from ``--moments`` (see diagnose_keys.py), or the projectors from the plugin's cached
statistics with ``--store`` (layers [4, 5, 6] only unless the store has others); ``--eval-format``
chooses plain or chat evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import conceptkit as ck
from conceptkit_rocr.edit import compute_edit
from conceptkit_rocr.evaluate import evaluate, forms_data
from conceptkit_rocr.solve import nullspace_projector

KNOWN = ["Albert Einstein", "Charles Darwin", "Sigmund Freud", "Thomas Edison", "Mark Zuckerberg", "Napoleon Bonaparte",
         "Julius Caesar", "Mahatma Gandhi", "Barack Obama", "Ludwig van Beethoven"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--moments", default="rocr-moments.pt")
    ap.add_argument("--store", default=None, help="take the projectors from the plugin's cached statistics in this store (as measure_smollm2.py) instead of --moments")
    ap.add_argument("--eval-format", default="plain", choices=["plain", "chat", "chat_instruct", "chat_restate"], help="how the evaluation asks (see conceptkit_rocr.evaluate)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = ck.load_model("smollm2-135m", backend="transformers")
    if args.store:
        from conceptkit_rocr.config import RocrConfig
        from conceptkit_rocr.method import ROCR

        store = ck.open_store(args.store)

        def projectors(layers, thr, rel):
            cfg = RocrConfig(target=KNOWN[0], harmless="John Smith", layers=layers, nullspace_threshold=thr, nullspace_relative=rel)
            return {l: st.projector.P for l, st in ROCR()._stats(model, cfg, layers, store).items()}
    else:
        from diagnose_keys import moments  # same folder

        M = moments(model, Path(args.moments), [3, 4, 5, 6, 7, 8])

        def projectors(layers, thr, rel):
            return {l: nullspace_projector(M[l], thr, rel).P for l in layers}
    unrelated = forms_data()["unrelated"][:10]
    for cfg in map(json.loads, args.configs):
        layers = cfg.get("layers", [4, 5, 6])
        P = projectors(layers, cfg.get("thr", 2e-2), cfg.get("rel"))
        agg = {f: [0.0, 0.0] for f in ["fill_blank", "qa", "mcq", "paraphrase_1", "paraphrase_2", "neigh"]}
        kls, times, resid, per = [], [], [], {}
        for name in KNOWN:
            t = time.perf_counter()
            edit = compute_edit(model, name, "John Smith", layers, P, l2=cfg.get("l2", 1.0), templates=cfg.get("templates", "auto"),
                                value_context=cfg.get("value", "bare"), z_context=cfg.get("z", "first"))
            times.append(time.perf_counter() - t)
            resid.append((edit.factors[0].residual_norm, edit.info["residual_after"]))
            ev = evaluate(model, name, lambda: edit.apply(model), fluency=False, unrelated=unrelated, eval_format=args.eval_format)
            for r in ev.forms:
                agg[r.form][0] += r.prob_before
                agg[r.form][1] += r.prob_after
            for r in ev.neighbours:
                agg["neigh"][0] += r.prob_before
                agg["neigh"][1] += r.prob_after
            kls.append(ev.kl_unrelated)
            per[name] = round(ev.relative_drop(), 2)
            print(name, per[name], round(times[-1], 1), flush=True)
        allb = sum(v[0] for f, v in agg.items() if f != "neigh")
        alla = sum(v[1] for f, v in agg.items() if f != "neigh")
        print(json.dumps(cfg), f"eval {args.eval_format}", f"ALL drop {1 - alla / allb:.0%}", " ".join(f"{f}:{1 - a / b:.0%}" for f, (b, a) in agg.items() if f != "neigh"),
              f"neigh kept {agg['neigh'][1] / agg['neigh'][0]:.0%} KL {sum(kls) / len(kls):.4f} max {max(kls):.4f} edit s med {sorted(times)[len(times) // 2]:.1f}",
              "resid", [f"{a:.0f}->{b:.0f}" for a, b in resid], per, flush=True)


if __name__ == "__main__":
    main()
