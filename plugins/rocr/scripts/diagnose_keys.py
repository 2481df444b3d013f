"""Why an edit does not close the residual: the key's energy in the null space and the fraction of
the residual one layer's update delivers at the subject's key in each context (issue 15).

    OMP_NUM_THREADS=2 .venv/bin/python plugins/rocr/scripts/diagnose_keys.py "Albert Einstein;Julius Caesar"

``delivered`` = ``wᵀ k_ctx`` with ``w = P k / (kᵀ P k + λ)``: the share of ``R`` written at the key
of context ``ctx`` (bare prompt, the five evaluation forms) when ``k`` is the mean key over the chat
or the plain templates. The preserved-key moments are computed once (default corpus) and cached in
``--moments``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import conceptkit as ck
from conceptkit_rocr.corpus import preserved_texts
from conceptkit_rocr.evaluate import FORMS, entity
from conceptkit_rocr.solve import nullspace_projector
from conceptkit_rocr.stats import second_moments
from conceptkit_rocr.templates import context_templates, pad_id, pad_right, subject_prefix_ids


def moments(model, path: Path, layers: list[int]) -> dict[int, torch.Tensor]:
    if path.exists():
        return torch.load(path)["moments"]
    texts, fp = preserved_texts()
    m, n = second_moments(model, texts, layers)
    torch.save({"moments": m, "n": n, "fp": fp}, path)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("entities")
    ap.add_argument("--layers", default="4,5,6")
    ap.add_argument("--moments", default="rocr-moments.pt")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    torch.set_grad_enabled(False)
    model = ck.load_model("smollm2-135m", backend="transformers")
    tok = model.tokenizer
    M = moments(model, Path(args.moments), layers)
    chat, _ = context_templates(tok, "chat")
    plain, _ = context_templates(tok, "plain")

    def keys(rows, layer):
        site = f"blocks.{layer}.mlp.hook_post"
        return model.capture(pad_right(rows, pad_id(tok)), [site], reduce="last")[site].double()

    def form_rows(name):
        out = []
        for f in FORMS:
            p = entity(name)["forms"][f]["prompt"]
            out.append(list(tok(p[: p.index(name) + len(name)], add_special_tokens=True)["input_ids"]))
        return out

    cos = lambda a, b: float(a @ b / a.norm() / b.norm())  # noqa: E731
    for name in args.entities.split(";"):
        print("==", name)
        ke_rows = form_rows(name)
        for layer in layers:
            kb = keys([subject_prefix_ids(tok, "{}", name)], layer)[0]
            ke = keys(ke_rows, layer)
            for label, templ in (("chat", chat), ("plain", plain)):
                k = keys([subject_prefix_ids(tok, t, name) for t in templ], layer).mean(0)
                print(f" L{layer} {label:5} |k|^2={float(k @ k):.1f} cos(k, bare)={cos(k, kb):.2f} cos(k, forms)=" + ",".join(f"{cos(k, x):.2f}" for x in ke))
                for thr, rel in ((2e-2, None), (None, 1e-2), (None, 1e-1)):
                    P = nullspace_projector(M[layer], thr, rel)
                    Pk = P.P @ k
                    for lam in (1.0, 0.1):
                        d = lambda x: float(x @ Pk / (k @ Pk + lam))  # noqa: E731
                        print(f"   thr={thr} rel={rel} null={P.null_dim} lam={lam}: k'Pk/|k|^2={float(k @ Pk / (k @ k)):.0%} "
                              f"delivered: self {d(k):.2f} bare {d(kb):.2f} forms " + ",".join(f"{d(x):.2f}" for x in ke))


if __name__ == "__main__":
    main()
