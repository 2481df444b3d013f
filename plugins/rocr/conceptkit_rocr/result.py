"""The ROCR report: the edit (factors per layer, one record), statistics, and the evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic

import conceptkit as ck
from conceptkit_rocr.evaluate import FORMS, Evaluation


class LayerReport(pydantic.BaseModel):
    layer: int
    delta_norm: float  # ‖Δ‖_F = ‖w‖ ‖R‖ (rank one)
    residual_norm: float  # ‖z - h‖ before this layer's update
    key_rank: int  # rank of the preserved keys' second moment
    null_dim: int  # dimension of the subspace the update may use
    width: int  # MLP width
    n_tokens: int
    tau: float
    stats_source: str
    stats_seconds: float


class RocrResult(ck.Result):
    target: str = ""
    harmless: str = ""
    layers: list[int] = pydantic.Field(default_factory=list)
    z_layer: int = 0
    templates_kind: str = ""
    value_context: str = "bare"
    mode: str = "unrelated"
    texts_fingerprint: str = ""
    base_hashes: dict[int, str | None] = pydantic.Field(default_factory=dict)
    layer_reports: list[LayerReport] = pydantic.Field(default_factory=list)
    residual_after: float = math.nan
    edit_seconds: float = math.nan
    evaluations: list[Evaluation] = pydantic.Field(default_factory=list)
    baseline_info: dict[str, Any] = pydantic.Field(default_factory=dict)
    edit: Any = pydantic.Field(None, repr=False, exclude=True)  # the RocrEdit
    parents: list[str] = pydantic.Field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"ROCR: {self.target!r} -> {self.harmless!r}, layers {self.layers} (value at block {self.z_layer}), "
            f"{self.templates_kind} templates, value context {self.value_context} "
            + ("(the reference's bare prompt)" if self.value_context == "bare" else "") + f", mode {self.mode}",
            f"edit computed in {self.edit_seconds:.2f} s; ‖z - h‖ after the edit {self.residual_after:.3f}",
            f"{'layer':>5} {'‖Δ‖':>8} {'‖z-h‖':>8} {'rank K0':>8} {'null dim':>8} {'tokens':>7} {'stats':>12}",
        ]
        for r in self.layer_reports:
            lines.append(f"{r.layer:>5} {r.delta_norm:8.3f} {r.residual_norm:8.3f} {r.key_rank:>4}/{r.width:<4}{r.null_dim:>8} {r.n_tokens:>7} {r.stats_source:>6} {r.stats_seconds:4.1f}s")
        for ev in self.evaluations:
            lines.append("")
            lines.append(f"[{ev.method}] {ev.entity}: answer probability (length-normalised) and top-1, before -> after (asked in {ev.eval_format} format)")
            for r in ev.forms:
                lines.append(f"  {r.form:<14} {r.prob_before:7.3f} -> {r.prob_after:7.3f}  top1 {int(r.top1_before)} -> {int(r.top1_after)}")
            lines.append(f"  all forms: mean prob {ev.mean_prob('forms', 'before'):.3f} -> {ev.mean_prob('forms', 'after'):.3f} "
                         f"({ev.relative_drop():.0%} relative drop); paraphrases {ev.relative_drop(['paraphrase_1', 'paraphrase_2']):.0%}; "
                         f"training form {ev.relative_drop(['fill_blank']):.0%}")
            lines.append(f"  neighbours keep {ev.neighbour_kept():.0%} of their probability; KL on unrelated text {ev.kl_unrelated:.4f} nats/token; "
                         f"fluency {ev.fluency_before:.2f} -> {ev.fluency_after:.2f}")
            for g0, g1 in zip(ev.generations_before, ev.generations_after):
                lines.append(f"    before: {g0!r}\n    after:  {g1!r}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path | None:
        if not self.evaluations:
            return None
        return plot_forms(self.evaluations, path)

    def drafts(self) -> list[Any]:
        """One ``weight_edit`` record: the core's low-rank edit set plus the layers and keys."""
        if self.edit is None:
            return []
        metrics: dict[str, Any] = {
            "delta_norms": [r.delta_norm for r in self.layer_reports],
            "key_ranks": [r.key_rank for r in self.layer_reports],
            "residual_after": self.residual_after,
            "edit_seconds": self.edit_seconds,
            "harmless": self.harmless,
        }
        rocr = [e for e in self.evaluations if e.method == "rocr"]
        if rocr:
            metrics.update(relative_drop_all_forms=rocr[0].relative_drop(), neighbour_kept=rocr[0].neighbour_kept(), kl_unrelated=rocr[0].kl_unrelated)
        draft = self.edit.edit_set().to_draft(
            self.target,
            description=f"ROCR edit: {self.target!r} redirected to {self.harmless!r}; rank-one W_out updates of layers {self.layers} "
                        "(i.left [d_mlp,1] x i.right [d,1]ᵀ, TL [in,out] layout); rocr.keys feed C_prev of sequential edits",
            model=self.model_ref, tags=["rocr", "unlearning"], parents=self.parents, metrics=metrics,
        )
        return [draft.model_copy(update={
            "tensors": {**draft.tensors, **self.edit.extra_tensors()},
            "examples_fingerprint": self.texts_fingerprint,
            "reduction": "subject_last",
        })]


def plot_forms(evaluations: list[Evaluation], path: str | Path) -> Path:
    """Mean answer probability per form, before and after, one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({e.method for e in evaluations}, key=lambda m: (m != "rocr", m))
    cols = FORMS + ["neighbours"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        evs = [e for e in evaluations if e.method == m]
        before = [sum(e.mean_prob("forms", "before", [f]) for e in evs) / len(evs) for f in FORMS] + [sum(e.mean_prob("neighbours", "before") for e in evs) / len(evs)]
        after = [sum(e.mean_prob("forms", "after", [f]) for e in evs) / len(evs) for f in FORMS] + [sum(e.mean_prob("neighbours", "after") for e in evs) / len(evs)]
        xs = range(len(cols))
        ax.bar([x - 0.2 for x in xs], before, 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], after, 0.4, label="after")
        ax.set_xticks(list(xs), cols, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{m} ({len(evs)} entit{'y' if len(evs) == 1 else 'ies'})")
        ax.set_ylabel("answer probability (length-normalised)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
