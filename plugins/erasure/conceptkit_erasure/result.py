"""The erasure report: per-site probe accuracies, LM loss before/after, the stored erasers."""

from __future__ import annotations

import math
from typing import Any

import pydantic

import conceptkit as ck
from conceptkit.api import RecordDraft


class SiteReport(pydantic.BaseModel):
    site: str
    rank: int
    probe_accuracy_before: float  # balanced held-out accuracy (chance 0.5 for two classes)
    probe_accuracy_after: float
    mean_sq_change: float  # mean ||x' - x||^2 per token at this site (held-out texts)
    mean_sq_norm: float  # mean ||x||^2, for scale


class ErasureResult(ck.Result):
    concept: str = ""
    sites: list[SiteReport] = pydantic.Field(default_factory=list)
    #: every site an eraser was fitted at (``sites`` holds the probe reports, maybe a subset)
    erased_sites: list[str] = pydantic.Field(default_factory=list)
    bits_per_byte_before: float = math.nan
    bits_per_byte_after: float = math.nan
    bits_per_byte_random: float | None = None
    n_train_tokens: int = 0
    n_test_tokens: int = 0
    positive_fraction: float = 0.0
    tensors: dict[str, Any] = pydantic.Field(default_factory=dict, repr=False, exclude=True)

    def summary(self) -> str:
        lines = [
            f"concept scrubbing of {self.concept!r}: {len(self.erased_sites or self.sites)} sites erased"
            + (f" ({len(self.sites)} reported; --set full=true for all)" if len(self.sites) < len(self.erased_sites) else "")
            + f", {self.n_train_tokens} training and "
            f"{self.n_test_tokens} held-out tokens ({self.positive_fraction:.0%} positive)",
            f"LM loss on held-out text: {self.bits_per_byte_before:.4f} bits/byte before, {self.bits_per_byte_after:.4f} after"
            + (f", {self.bits_per_byte_random:.4f} with random erasers of the same rank" if self.bits_per_byte_random is not None else ""),
            f"{'site':<26} {'rank':>4} {'probe before':>12} {'after':>7} {'mean sq change':>15}",
        ]
        for r in self.sites:
            lines.append(f"{r.site:<26} {r.rank:>4} {r.probe_accuracy_before:12.3f} {r.probe_accuracy_after:7.3f} {r.mean_sq_change:15.4f}")
        return "\n".join(lines)

    def drafts(self) -> list[RecordDraft]:
        if not self.tensors:
            return []
        return [RecordDraft(
            tensors=self.tensors,
            concept=self.concept,
            description="LEACE concept-scrubbing erasers, one per site (proj_left, proj_right, bias)",
            kind="eraser",
            site=",".join(self.erased_sites or [r.site for r in self.sites]),
            reduction="all",
            metrics={
                "bits_per_byte_before": self.bits_per_byte_before,
                "bits_per_byte_after": self.bits_per_byte_after,
                "bits_per_byte_random": self.bits_per_byte_random,
                "max_probe_accuracy_after": max(r.probe_accuracy_after for r in self.sites),
                "min_probe_accuracy_before": min(r.probe_accuracy_before for r in self.sites),
            },
            tags=["erasure", "leace"],
        )]


def bits_per_byte(model: ck.Model, texts: list[str], interventions: list, batch_size: int) -> float:
    nll, _ = model.nll(texts, interventions, batch_size=batch_size)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return float(nll.sum() / math.log(2) / n_bytes)


