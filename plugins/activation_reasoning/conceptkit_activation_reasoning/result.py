"""The ActivationReasoning report: the dictionary, and per prompt detected -> fired -> steered."""

from __future__ import annotations

import math
from typing import Any

import pydantic

import conceptkit as ck


class PromptTrace(pydantic.BaseModel):
    prompt: str
    detected: list[str]
    fired: list[str]
    proofs: dict[str, list[str]] = pydantic.Field(default_factory=dict)
    steered: list[str]
    delta_norms: list[float] = pydantic.Field(default_factory=list)
    plain: str = ""
    with_ar: str = ""
    answer: str | None = None
    correct_plain: bool | None = None
    correct_ar: bool | None = None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion ``k / n``."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (mid - half, mid + half)


class ARResult(ck.Result):
    site: str = ""
    source: str = ""
    concepts: list[str] = pydantic.Field(default_factory=list)
    thresholds: list[float] = pydantic.Field(default_factory=list)
    train_balanced_accuracy: list[float] = pydantic.Field(default_factory=list)
    rules: list[str] = pydantic.Field(default_factory=list)
    traces: list[PromptTrace] = pydantic.Field(default_factory=list)
    accuracy_plain: float | None = None
    accuracy_ar: float | None = None
    dictionary: Any = pydantic.Field(None, repr=False, exclude=True)

    def summary(self) -> str:
        lines = [f"ActivationReasoning at {self.site} ({self.source} dictionary, {len(self.concepts)} concepts, {len(self.rules)} rules)"]
        for c, t, b in zip(self.concepts, self.thresholds, self.train_balanced_accuracy or [math.nan] * len(self.concepts)):
            lines.append(f"  {c:<20} tau {t:8.3f}  train balanced acc {b:.3f}")
        for r in self.rules:
            lines.append(f"  rule {r}")
        for i, t in enumerate(self.traces):
            lines.append(f"[{i}] {t.prompt!r}")
            lines.append(f"    detected {t.detected} -> fired {t.fired} -> steered {t.steered}")
            for head, proof in t.proofs.items():
                lines.append(f"    proof of {head}: {' ; '.join(proof)}")
            lines.append(f"    plain  : {t.plain!r}")
            lines.append(f"    with AR: {t.with_ar!r}" + (f"  (answer {t.answer!r}: plain {t.correct_plain}, AR {t.correct_ar})" if t.answer else ""))
        if self.accuracy_plain is not None:
            n = len(self.traces)
            kp, ka = sum(bool(t.correct_plain) for t in self.traces), sum(bool(t.correct_ar) for t in self.traces)
            lo, hi = wilson(kp, n)
            lo2, hi2 = wilson(ka, n)
            lines.append(f"accuracy without AR {kp}/{n} = {self.accuracy_plain:.3f} [{lo:.3f}, {hi:.3f}]; "
                         f"with AR {ka}/{n} = {self.accuracy_ar:.3f} [{lo2:.3f}, {hi2:.3f}] (Wilson 95%)")
        return "\n".join(lines)

    def drafts(self) -> list:
        if self.dictionary is None:
            return []
        d = self.dictionary.to_draft(concept="ar-" + "-".join(c.replace(" ", "_") for c in self.concepts)[:60])
        d.metrics.update({f"train_balanced_accuracy/{c}": float(b) for c, b in zip(self.concepts, self.train_balanced_accuracy)})
        return [d]
