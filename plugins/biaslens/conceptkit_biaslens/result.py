"""BiasLens results: per-target, per-layer bias with probe accuracies, validation, plots, drafts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic

import conceptkit as ck
from conceptkit.api import RecordDraft


class LayerRow(pydantic.BaseModel):
    layer: int
    bias: float
    alignment: list[float]  # cos(z_target, z_reference_j)
    min_probe_accuracy: float  # over the target and every reference at this layer
    kept: bool  # min_probe_accuracy >= threshold: averaged into the target's bias


class TargetRow(pydantic.BaseModel):
    concept: str
    bias: float | None  # mean over kept layers; None when no layer is kept
    layers: list[LayerRow]
    behaviour: float | None = None
    examples_fingerprint: str | None = None

    @property
    def kept_layers(self) -> list[int]:
        return [r.layer for r in self.layers if r.kept]

    @property
    def flagged_layers(self) -> list[int]:
        return [r.layer for r in self.layers if not r.kept]


class BiasLensResult(ck.Result):
    targets: list[TargetRow] = pydantic.Field(default_factory=list)
    references: list[str] = pydantic.Field(default_factory=list)
    layers: list[int] = pydantic.Field(default_factory=list)
    sites: list[str] = pydantic.Field(default_factory=list)
    probe_accuracy: dict[str, list[float]] = pydantic.Field(default_factory=dict)  # concept -> per layer
    validation: dict[str, Any] | None = None
    settings: dict[str, Any] = pydantic.Field(default_factory=dict)
    cav_tensors: dict[str, Any] = pydantic.Field(default_factory=dict, repr=False, exclude=True)  # concept -> [L, d]

    def target(self, concept: str) -> TargetRow:
        for t in self.targets:
            if t.concept == concept:
                return t
        raise KeyError(f"no target {concept!r}; targets: {[t.concept for t in self.targets]}")

    def summary(self) -> str:
        s = self.settings
        refs = " vs ".join(self.references)
        lines = [
            f"BiasLens: {len(self.targets)} target(s), references {refs}; score {s.get('score')} "
            f"(> 0 favours {self.references[0] if self.references else '?'}), SAE option {s.get('sae_option')}, "
            f"{'mean CAV removed, ' if s.get('remove_mean_cav') else ''}negatives {s.get('negatives')}, "
            f"layers kept where every probe reaches {s.get('min_probe_accuracy')}",
            f"{'target':<18} {'bias':>8} {'behaviour':>10}  layers kept / flagged",
        ]
        for t in self.targets:
            bias = "   n/a  " if t.bias is None else f"{t.bias:8.4f}"
            behaviour = "" if t.behaviour is None else f"{t.behaviour:10.3f}"
            lines.append(f"{t.concept:<18} {bias} {behaviour:>10}  {len(t.kept_layers)} / {len(t.flagged_layers)}")
        if any(t.bias is None for t in self.targets):
            lines.append("n/a: no layer where every involved probe reaches the accuracy threshold")
        if self.validation:
            v = self.validation
            rho = v["spearman"]
            ci = "" if math.isnan(v["ci_low"]) else f", {int(v['level'] * 100)}% bootstrap CI [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            lines.append(f"validation: Spearman rho (BiasLens vs behaviour) = {rho:.3f} over {v['n_targets']} targets{ci}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Per-layer bias of each target with the minimum probe accuracy, and, when behaviour was
        measured, BiasLens against behaviour with Spearman's rho."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        has_val = any(t.behaviour is not None and t.bias is not None for t in self.targets)
        fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 4), squeeze=False)
        ax = axes[0][0]
        for t in self.targets:
            ax.plot([r.layer for r in t.layers], [r.bias for r in t.layers], marker=".", lw=1, alpha=0.7, label=t.concept if len(self.targets) <= 8 else None)
        acc = [min(self.probe_accuracy[c][i] for c in self.probe_accuracy) for i in range(len(self.layers))]
        ax2 = ax.twinx()
        ax2.plot(self.layers, acc, color="grey", ls="--", label="min probe accuracy")
        ax2.axhline(self.settings.get("min_probe_accuracy", 0.8), color="grey", lw=0.5)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("min probe accuracy")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"bias ({self.settings.get('score')})")
        ax.set_title("BiasLens per layer")
        if len(self.targets) <= 8:
            ax.legend(fontsize=7)
        if has_val:
            ax = axes[0][1]
            pts = [(t.bias, t.behaviour, t.concept) for t in self.targets if t.behaviour is not None and t.bias is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts])
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7)
            rho = (self.validation or {}).get("spearman", float("nan"))
            ax.set_title(f"BiasLens vs behaviour (Spearman rho = {rho:.2f})")
            ax.set_xlabel("BiasLens bias")
            ax.set_ylabel("behavioural bias")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def drafts(self) -> list[RecordDraft]:
        """One record per fitted concept: its CAV at every analysed layer (``[L, d]``), with
        per-layer probe accuracy; targets also carry their bias and the settings."""
        by_name = {t.concept: t for t in self.targets}
        out = []
        for concept, cavs in self.cav_tensors.items():
            target = by_name.get(concept)
            metrics: dict[str, Any] = {
                "probe_accuracy_min": float(min(self.probe_accuracy[concept])),
                "probe_accuracy_mean": float(sum(self.probe_accuracy[concept]) / len(self.probe_accuracy[concept])),
            }
            if target is not None:
                metrics["bias"] = target.bias
                metrics["behaviour"] = target.behaviour
                metrics["layers_kept"] = len(target.kept_layers)
            out.append(
                RecordDraft(
                    tensors={"cavs": cavs},
                    concept=concept,
                    description=f"BiasLens per-layer CAVs at blocks.{{l}}.hook_resid_post for layers {self.layers}",
                    kind="vector_set",
                    examples_fingerprint=target.examples_fingerprint if target else None,
                    model=self.model_ref,
                    reduction="last",
                    metrics=metrics,
                    tags=["biaslens", "target" if target else "reference", f"score:{self.settings.get('score')}", f"sae:{self.settings.get('sae_option')}"],
                )
            )
        return out
