"""ObsProp on SmolLM2-135M-Instruct: the measurements of issue 14 (not a test; run by hand).

    OMP_NUM_THREADS=2 .venv/bin/python plugins/obsprop/scripts/smollm2_study.py [--out DIR] [--tokens 51200] [--pairs 24]

Observables: subject " she" - " he", object " her" - " him"; prompts from the shipped names and
templates (``conceptkit_obsprop/data``). Writes ``results.json`` and plots to ``--out``
(default ``plugins/obsprop/results``) and prints every figure:

1. data-free head ranking (feature norm, with and without norm factors) beside the path-patching
   ranking (mean over prompt pairs of the OV-only patching effect), plus greedy path search;
2. at the top-5 heads, cosine of subject vs object features against the raw observables' cosine;
3. predicted coupling C vs the best-fit slope (and r²) of feature scores over >= 50,000 tokens
   of the offline corpus, at the top-3 heads;
4. low-data comparison on >= 200 held-out prompts: ObsProp (no labels) vs a mean-difference
   vector (10 + 10) vs a logistic probe (10 + 10), scored at the name token, against the model's
   own logit difference (Pearson r, AUC for its sign);
5. backend parity: TransformerLens vs nnsight on the same computations.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import conceptkit as ck
from conceptkit_obsprop import pullback as pb
from conceptkit_obsprop.circuit import Circuit
from conceptkit_obsprop.config import Node, Observable
from conceptkit_obsprop.corpus import corpus_windows
from conceptkit_obsprop.features import Feature, final_feature, fit_line, head_feature_norms, path_feature, rank_heads
from conceptkit_obsprop.observables import observable_vector
from conceptkit_obsprop.patching import Patcher
from conceptkit_obsprop.prompts import prompts
from conceptkit_obsprop.result import plot_coupling
from conceptkit_obsprop.scoring import score_tokens
from conceptkit_obsprop.trace import trace

OBS = {
    "subject": Observable(name="subject", positive_tokens=[" she"], negative_tokens=[" he"]),
    "object": Observable(name="object", positive_tokens=[" her"], negative_tokens=[" him"]),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pairs(tok, task: str, k: int) -> list[tuple]:
    """``k`` (female, male) prompt pairs of equal length, cycling through the templates."""
    out = []
    fem = {t: prompts(tok, task, "female", t) for t in range(3)}
    mal = {t: prompts(tok, task, "male", t) for t in range(3)}
    i = 0
    while len(out) < k:
        t = i % 3
        f, m = fem[t][i // 3], mal[t][i // 3]
        if f.n_tokens == m.n_tokens:
            out.append((f, m))
        i += 1
    return out


def ln_feature(c: Circuit, n: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Head feature with norm factors (gains; the sqrt(d)/|x| scales cancel in C and cosines)."""
    y = c.pull_norm("ln_final", None, pb.unembed_pullback(c.W_U, n), None, "approx")
    return c.pull_norm("ln1", layer, pb.ov_pullback(c.W_V(layer), c.W_O(layer), y, head), None, "approx")


def raw_feature(c: Circuit, n: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    return pb.ov_pullback(c.W_V(layer), c.W_O(layer), pb.unembed_pullback(c.W_U, n), head)


def as_feature(y: torch.Tensor, layer: int, head: int, name: str) -> Feature:
    return Feature(observable=name, path=[Node(layer=layer, sublayer="attn", head=head)], y=y.float(), norm=float(y.norm()),
                   site=f"blocks.{layer}.hook_resid_pre", token=-1)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), scores.numpy()))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    ap.add_argument("--tokens", type=int, default=51_200)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--section", choices=["all", "rankings", "coupling", "lowdata", "parity"], default="all",
                    help="run one section (in parallel processes); the others take the heads from results_rankings.json "
                         "in --out if it exists, else the data-free top heads")
    ap.add_argument("--shard", default=None, help="coupling only: 'i/k' scores windows i, i+k, ... into scores_i_of_k.pt and stops")
    ap.add_argument("--merge", type=int, default=None, help="coupling only: read k shard files instead of scoring")
    args = ap.parse_args()
    want = lambda name: args.section in ("all", name)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    report: dict = {}

    def save() -> None:  # after every section, so a late failure loses nothing
        name = "results.json" if args.section == "all" else f"results_{args.section}.json"
        (out / name).write_text(json.dumps(report, indent=1, default=str))

    log("loading smollm2-135m (nnsight)")
    m = ck.load_model("smollm2-135m", backend="nnsight")
    c = Circuit(m)
    tok = m.tokenizer
    V = c.W_U.shape[1]
    ns = {k: observable_vector(o, tok, V) for k, o in OBS.items()}

    if want("rankings"):
        # -- 1. rankings -------------------------------------------------------------------------------
        log("data-free ranking")
        t0 = time.perf_counter()
        scale_traces = [trace(m, p.text, with_pattern=False) for f, mm in pairs(tok, "subject", 6) for p in (f, mm)]
        norms = {k: head_feature_norms(c, n) for k, n in ns.items()}
        norms_ln = {k: head_feature_norms(c, n, with_norms=True, traces=scale_traces) for k, n in ns.items()}
        report["data_free_seconds"] = time.perf_counter() - t0
        log("path patching over prompt pairs")
        patch = {}
        search = {}
        for task, n in ns.items():
            total = torch.zeros(c.n_layers, c.n_heads, dtype=torch.float64)
            ps = pairs(tok, task, args.pairs)
            for i, (f, mm) in enumerate(ps):
                pos, neg = trace(m, f.text), trace(m, mm.text)
                y_f = final_feature(c, n, "approx", pos)
                patcher = Patcher(c, pos, neg, y_f)
                total += patcher.head_scores().double()
                if i == 0:
                    t0 = time.perf_counter()
                    per_length, emb = patcher.search(3, 10)
                    search[task] = {
                        "prompt_pair": [f.text, mm.text],
                        "seconds": time.perf_counter() - t0,
                        "paths": [[{"label": p.label, "contrib": p.contrib} for p in level[:5]] for level in per_length],
                        "embedding": [{"label": p.label, "contrib": p.contrib} for p in emb[:3]],
                    }
            patch[task] = total / len(ps)
        tables = {}
        for task in ns:
            df = rank_heads(norms[task], 10)
            dfl = rank_heads(norms_ln[task], 10)
            pp = rank_heads(patch[task], 10)
            tables[task] = {"data_free": df, "data_free_with_norms": dfl, "path_patching": pp}
            print(f"\n== head rankings, {task} observable {OBS[task].label!r} (path patching: mean over {args.pairs} pairs)")
            print(f"{'#':>2}  {'data-free':<18} {'with norm factors':<20} {'path patching':<18}")
            for i in range(10):
                a, b, p_ = df[i], dfl[i], pp[i]
                print(f"{i + 1:>2}  {a[0]:>2}.{a[1]:<2} {a[2]:9.3f}    {b[0]:>2}.{b[1]:<2} {b[2]:9.3f}      {p_[0]:>2}.{p_[1]:<2} {p_[2]:9.4f}")
            for level, paths in enumerate(search[task]["paths"], 1):
                print(f"   greedy search, length {level}: " + "; ".join(f"{q['label']} ({q['contrib']:.3f})" for q in paths[:3]))
        report["rankings"] = tables
        report["path_search"] = search
        save()
        top_df = [(l, h) for l, h, _ in tables["subject"]["data_free"]]
        top_pp = [(l, h) for l, h, _ in tables["subject"]["path_patching"]]
        common_df = len(set(top_df[:10]) & set(top_pp[:10]))
        print(f"\nsubject: heads in both top-10 lists: {common_df}; top-5 overlap {len(set(top_df[:5]) & set(top_pp[:5]))}")

        # -- 2. cosines at the top-5 heads ---------------------------------------------------------------------
        raw_cos = pb.cosine(c.W_U @ ns["subject"], c.W_U @ ns["object"])
        raw_cos_ln = pb.cosine(c.pull_norm("ln_final", None, c.W_U @ ns["subject"], None, "approx"),
                               c.pull_norm("ln_final", None, c.W_U @ ns["object"], None, "approx"))
        cos_rows = []
        for label, heads in (("data-free", top_df[:5]), ("path patching", top_pp[:5])):
            for l, h in heads:
                cos_rows.append({"ranking": label, "layer": l, "head": h,
                                 "cosine": pb.cosine(raw_feature(c, ns["subject"], l, h), raw_feature(c, ns["object"], l, h)),
                                 "cosine_with_norms": pb.cosine(ln_feature(c, ns["subject"], l, h), ln_feature(c, ns["object"], l, h))})
        print(f"\n== subject vs object features: raw observables after W_U cosine {raw_cos:.4f} (after ln_f gains {raw_cos_ln:.4f})")
        for r in cos_rows:
            print(f"  {r['ranking']:<14} {r['layer']:>2}.{r['head']:<2} cos {r['cosine']:.4f}  with norm factors {r['cosine_with_norms']:.4f}")
        report["cosines"] = {"raw_observables": raw_cos, "raw_observables_after_ln_f_gain": raw_cos_ln, "heads": cos_rows}
        save()
        from conceptkit_obsprop.result import ObsPropResult

        res = ObsPropResult(observables=list(ns), n_layers=c.n_layers, n_heads=c.n_heads,
                            head_norms={k: v.tolist() for k, v in norms.items()}, head_norms_ln={k: v.tolist() for k, v in norms_ln.items()})
        report["plot_feature_norms"] = str(res.plot(out / "feature_norms.png"))
        save()
    else:
        norms = {k: head_feature_norms(c, n) for k, n in ns.items()}
        tables = {task: {"data_free": rank_heads(norms[task], 10)} for task in ns}
        saved = out / "results_rankings.json"
        for task in ns:
            if saved.exists():
                tables[task]["path_patching"] = [tuple(r) for r in json.loads(saved.read_text())["rankings"][task]["path_patching"]]
            else:
                tables[task]["path_patching"] = tables[task]["data_free"]
        top_df = [(l, h) for l, h, _ in tables["subject"]["data_free"]]
        top_pp = [(l, h) for l, h, _ in tables["subject"]["path_patching"]]
        report["heads_from"] = str(saved) if saved.exists() else "data-free ranking (path patching not run)"

    if want("coupling"):
        # -- 3. coupling vs measured slope over the corpus ------------------------------------------------------
        heads3 = list(dict.fromkeys(top_df[:3] + top_pp[:3]))
        log(f"scoring >= {args.tokens} corpus tokens at heads {heads3}")
        if args.merge is None:
            windows, corpus_name = corpus_windows(tok, args.tokens, context=128)
            n_win = windows["input_ids"].shape[0]
        feats = []
        for l, h in heads3:
            for kind, fn in (("raw", raw_feature), ("ln", ln_feature)):
                for task in ("subject", "object"):
                    feats.append((l, h, kind, task, as_feature(fn(c, ns[task], l, h), l, h, task)))
        t0 = time.perf_counter()
        if args.merge is not None:  # shards scored by parallel processes (--shard i/k)
            files = [out / f"scores_{i}_of_{args.merge}.pt" for i in range(args.merge)]
            parts = [torch.load(f_) for f_ in files if f_.exists()]
            report["shards_merged"] = f"{len(parts)} of {args.merge}"
            if not parts:
                raise SystemExit(f"no shard files scores_*_of_{args.merge}.pt in {out}")
            assert all(p_["labels"] == [f[:4] for f in feats] for p_ in parts), "shards scored other features"
            assert len({p_["corpus"] for p_ in parts}) == 1, f"shards scored different corpora: {[p_['corpus'] for p_ in parts]}"
            S, corpus_name = torch.cat([p_["S"] for p_ in parts]), parts[0]["corpus"]
            report["scoring_seconds"] = sum(p_["seconds"] for p_ in parts)
        else:
            if args.shard is not None:
                i_sh, k_sh = map(int, args.shard.split("/"))
                keep = torch.arange(i_sh, n_win, k_sh)
                windows = {k_: v[keep] for k_, v in windows.items()}
                n_win = len(keep)
            chunks = [{"input_ids": windows["input_ids"][i:i + 16], "attention_mask": windows["attention_mask"][i:i + 16]} for i in range(0, n_win, 16)]
            S = score_tokens(m, [f[-1] for f in feats], chunks, batch_size=16)
            report["scoring_seconds"] = time.perf_counter() - t0
            if args.shard is not None:
                torch.save({"S": S, "labels": [f[:4] for f in feats], "corpus": corpus_name, "seconds": report["scoring_seconds"]},
                           out / f"scores_{i_sh}_of_{k_sh}.pt")
                log(f"shard {args.shard}: scored {S.shape[0]} tokens")
                return
        n_tok = S.shape[0]
        first = torch.zeros(n_tok, dtype=torch.bool)
        first[torch.arange(0, n_tok, 128)] = True
        log(f"scored {n_tok} tokens from {corpus_name} in {report['scoring_seconds']:.0f} s")
        couplings = []
        idx = {(l, h, k, t): i for i, (l, h, k, t, _) in enumerate(feats)}
        print(f"\n== coupling subject -> object: predicted C vs best-fit slope over {n_tok} tokens ({corpus_name})")
        print(f"  {'head':<6} {'C raw':>7} {'C w/ norms':>10} {'slope raw':>9} {'r2':>6} {'slope w/ norms':>14} {'r2':>6} {'slope (no pos 0)':>16}")
        for l, h in heads3:
            row = {"layer": l, "head": h}
            for kind in ("raw", "ln"):
                y1, y2 = feats[idx[(l, h, kind, "subject")]][-1].y, feats[idx[(l, h, kind, "object")]][-1].y
                s1, s2 = S[:, idx[(l, h, kind, "subject")]], S[:, idx[(l, h, kind, "object")]]
                row[f"C_{kind}"] = pb.coupling(y1.double(), y2.double())
                row[f"fit_{kind}"] = fit_line(s1, s2)
                row[f"fit_{kind}_without_first_token"] = fit_line(s1[~first], s2[~first])
                if kind == "ln":
                    path = plot_coupling(s1.numpy(), s2.numpy(), row["fit_ln"], row["C_ln"], out / f"coupling_{l}_{h}.png",
                                         f"SmolLM2 head {l}.{h}: subject vs object feature scores ({n_tok} tokens)")
                    row["plot"] = str(path)
            couplings.append(row)
            print(f"  {l:>2}.{h:<3} {row['C_raw']:7.3f} {row['C_ln']:10.3f} {row['fit_raw']['slope']:9.3f} {row['fit_raw']['r2']:6.3f} "
                  f"{row['fit_ln']['slope']:14.3f} {row['fit_ln']['r2']:6.3f} {row['fit_ln_without_first_token']['slope']:16.3f}")
        report["coupling"] = {"corpus": corpus_name, "n_tokens": n_tok, "heads": couplings}
        save()

    if want("lowdata"):
        # -- 4. low-data comparison -------------------------------------------------------------------------------------------
        log("low-data comparison")
        from sklearn.linear_model import LogisticRegression

        low = {}
        for task, (p_tok, n_tok_) in {"subject": (" she", " he"), "object": (" her", " him")}.items():
            fem, mal = prompts(tok, task, "female"), prompts(tok, task, "male")
            rng = random.Random(0)
            train_names = set(rng.sample(sorted({p.name for p in fem}), 10)) | set(rng.sample(sorted({p.name for p in mal}), 10))
            train = [p for p in fem + mal if p.name in train_names and p.template == 0]
            held = [p for p in fem + mal if p.name not in train_names]
            heads_task = [(l, h) for l, h, _ in tables[task]["path_patching"][:3]]
            sites = sorted({f"blocks.{l}.hook_resid_pre" for l, _ in heads_task})
            pid, nid = tok.encode(p_tok, add_special_tokens=False)[0], tok.encode(n_tok_, add_special_tokens=False)[0]

            def acts_and_logits(ps):
                acts = {s: [] for s in sites}
                diffs = []
                for t in range(3):
                    group = [p for p in ps if p.template == t]
                    if not group:
                        continue
                    pos = group[0].name_position
                    cap = m.capture([p.text for p in group], sites, reduce=[pos], batch_size=32)
                    for s in sites:
                        acts[s].append(cap[s][:, 0])
                    logits = m.run([p.text for p in group], reduce="last", batch_size=32)
                    diffs.append(logits[:, pid] - logits[:, nid])
                return {s: torch.cat(v) for s, v in acts.items()}, torch.cat(diffs), [p for t in range(3) for p in ps if p.template == t]

            tr_acts, _, tr_ps = acts_and_logits(train)
            ho_acts, ho_diff, _ = acts_and_logits(held)
            tr_lab = torch.tensor([p.gender == "female" for p in tr_ps])
            sign = (ho_diff > 0).long()
            rows = []
            for l, h in heads_task:
                s = f"blocks.{l}.hook_resid_pre"
                X, Xh = tr_acts[s].double(), ho_acts[s].double()
                y_obs = ln_feature(c, ns[task], l, h).double()
                md = X[tr_lab].mean(0) - X[~tr_lab].mean(0)
                clf = LogisticRegression(max_iter=2000, C=1.0).fit(X.numpy(), tr_lab.numpy())
                scores = {"obsprop (0 labels)": Xh @ y_obs, "mean difference (10+10)": Xh @ md,
                          "logistic probe (10+10)": torch.tensor(clf.decision_function(Xh.numpy()))}
                for name, sc in scores.items():
                    rows.append({"layer": l, "head": h, "method": name, "pearson_r": pearson(sc, ho_diff), "auc_sign": auc(sc, sign)})
            low[task] = {"n_train": len(train), "n_held_out": len(held), "fraction_positive": float(sign.float().mean()), "rows": rows}
            print(f"\n== low-data comparison, {task}: {len(train)} training prompts (10 F + 10 M names, template 0), "
                  f"{len(held)} held-out prompts (other names, all templates); score at the name token vs logit diff {p_tok!r}-{n_tok_!r}")
            for r in rows:
                print(f"  {r['layer']:>2}.{r['head']:<2} {r['method']:<26} r = {r['pearson_r']:6.3f}   AUC(sign) = {r['auc_sign']:.3f}")
        report["low_data"] = low
        save()

    # -- 5. parity ----------------------------------------------------------------------------------------------------
    if want("parity") and not args.skip_parity:
        log("parity: the same computations through TransformerLens")
        tl = ck.load_model("smollm2-135m", backend="transformer_lens")
        ct = Circuit(tl)
        f, mm = pairs(tok, "subject", 1)[0]
        diffs = {}
        diffs["head_norms"] = float((head_feature_norms(ct, ns["subject"]) - norms["subject"]).abs().max())
        feats_par = {}
        for name, model_, circ in (("nnsight", m, c), ("transformer_lens", tl, ct)):
            pos, neg = trace(model_, f.text), trace(model_, mm.text)
            y_f = final_feature(circ, ns["subject"], "tangent", pos)
            l, h = top_pp[0]
            feat = path_feature(circ, y_f, [Node(layer=l, sublayer="attn", head=h, token=f.name_position - f.n_tokens),
                                            Node(layer=max(l - 1, 0), sublayer="mlp", token=f.name_position - f.n_tokens)],
                                node_norm="approx", pos=pos, neg=neg)
            feats_par[name] = (feat.y, Patcher(circ, pos, neg, final_feature(circ, ns["subject"], "approx", pos)).head_scores())
        diffs["tangent_path_feature"] = float((feats_par["nnsight"][0] - feats_par["transformer_lens"][0]).abs().max())
        diffs["patching_head_scores"] = float((feats_par["nnsight"][1] - feats_par["transformer_lens"][1]).abs().max())
        print("\n== backend parity (max abs difference, TransformerLens vs nnsight): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        report["parity"] = diffs

    save()
    log(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
