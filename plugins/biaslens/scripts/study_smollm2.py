"""The two BiasLens studies on SmolLM2-135M-Instruct, as reported in the closing notes.

For each study (occupations: female vs male; aspects: positive vs negative sentiment) the
Spearman rho between BiasLens and behaviour, with its 95% bootstrap interval, without and with
mean-CAV removal, and (when the embedded SAE is available) with SAE option ``a`` at its layer.

    python plugins/biaslens/scripts/study_smollm2.py [--layers 4-26] [--sae]
"""

from __future__ import annotations

import argparse
import json
import time

import conceptkit as ck


def _layers(spec: str) -> list[int]:
    lo, hi = (int(v) for v in spec.split("-"))
    return list(range(lo, hi + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="0-29")
    parser.add_argument("--sae", action="store_true", help="also run SAE option a with the embedded SAE")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args()
    model = ck.load_model("smollm2-135m")
    method = ck.method("biaslens")
    out = {}
    for study in ("occupations", "aspects"):
        variants = [("plain", {}), ("mean-CAV removed", {"remove_mean_cav": True})]
        if args.sae:
            sae = ck.load_sae("smollm2-135m", site="blocks.12.hook_resid_post")
            variants.append(("SAE option a (layer 12)", {"sae_option": "a", "layers": [12], "saes": {12: sae.path}}))
            variants.append(("no SAE (layer 12)", {"layers": [12]}))
        for label, extra in variants:
            t0 = time.perf_counter()
            cfg = {"study": study, "layers": _layers(args.layers), **extra}
            result = method.run(model, cfg)
            print(f"\n== {study}: {label} ({time.perf_counter() - t0:.0f} s)")
            print(result.summary())
            kept = sorted({layer for t in result.targets for layer in t.kept_layers})
            print(f"layers kept for at least one target: {kept}")
            out[f"{study}/{label}"] = {"validation": result.validation, "kept_layers": kept,
                                       "targets": {t.concept: [t.bias, t.behaviour] for t in result.targets}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
