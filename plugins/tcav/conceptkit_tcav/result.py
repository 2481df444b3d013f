"""TCAV results: a table per (concept, site), the conventions used, a plot, store drafts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

import conceptkit as ck
from conceptkit.api import RecordDraft


class TCAVRow(pydantic.BaseModel):
    concept: str
    site: str
    mean: float
    std: float
    p_value: float
    significant: bool
    magnitude_mean: float
    magnitude_ratio: float
    cav_accuracy: float  # mean held-out accuracy over runs
    cav_accuracy_min: float
    low_quality: bool  # more than a quarter of the CAVs at chance: not tested
    n_chance_cavs: int = 0  # CAVs below min_cav_accuracy, left out of the score
    n_runs: int = 0
    scores: list[float]
    baseline: bool = False  # the random-random row
    examples_fingerprint: str | None = None


class TCAVResult(ck.Result):
    rows: list[TCAVRow] = pydantic.Field(default_factory=list)
    conventions: dict[str, Any] = pydantic.Field(default_factory=dict)
    n_targets: int = 0
    cavs: dict[str, list[list[float]]] = pydantic.Field(default_factory=dict, repr=False)  # "concept|site" -> runs x d
    cav_accuracies: dict[str, list[float]] = pydantic.Field(default_factory=dict, repr=False)

    def row(self, concept: str, site: str | None = None) -> TCAVRow:
        for r in self.rows:
            if r.concept == concept and (site is None or r.site == site):
                return r
        raise KeyError(f"no row for concept {concept!r} at site {site!r}")

    def summary(self) -> str:
        lines = [
            f"TCAV on {self.n_targets} target inputs ({self.conventions.get('test')}, "
            f"probe {self.conventions.get('probe')}, gradient of {self.conventions.get('gradient_of')}, "
            f"{self.conventions.get('n_random')} runs)",
            f"{'concept':<24} {'site':<28} {'score':>6} {'± std':>6} {'p-value':>9}  sig  {'CAV acc':>7}",
        ]
        for r in self.rows:
            flag = "yes" if r.significant else "no "
            quality = f" ({r.n_chance_cavs}/{r.n_runs} CAVs near chance, left out)" if r.n_chance_cavs else ""
            if r.low_quality:
                quality += " (near chance: not tested)"
            name = r.concept
            lines.append(f"{name:<24} {r.site:<28} {r.mean:6.3f} {r.std:6.3f} {r.p_value:9.2e}  {flag}  {r.cav_accuracy:7.3f}{quality}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A bar chart per site: mean score with std error bars; insignificant bars hatched and
        marked with '*' (as in the TCAV paper's figures); the random-random baseline in grey."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        sites = list(dict.fromkeys(r.site for r in self.rows))
        fig, axes = plt.subplots(1, len(sites), figsize=(max(4, 1.6 * len(self.rows) / max(1, len(sites))) * len(sites), 4), squeeze=False)
        for ax, site in zip(axes[0], sites):
            rows = [r for r in self.rows if r.site == site]
            xs = range(len(rows))
            colors = ["#9e9e9e" if r.baseline else ("#1f77b4" if r.significant else "#c6dbef") for r in rows]
            bars = ax.bar(xs, [r.mean for r in rows], yerr=[r.std for r in rows], color=colors, capsize=4, edgecolor="black")
            for bar, r in zip(bars, rows):
                if not r.significant and not r.baseline:
                    bar.set_hatch("//")
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.03, "*", ha="center", fontsize=14)
            ax.axhline(0.5, color="black", lw=0.8, ls="--")
            ax.set_xticks(list(xs), [r.concept for r in rows], rotation=30, ha="right")
            ax.set_ylim(0, 1.1)
            ax.set_title(site, fontsize=9)
            ax.set_ylabel("TCAV score")
        fig.suptitle("TCAV (hatched *: not significant)", fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def drafts(self) -> list[RecordDraft]:
        import torch

        out = []
        for r in self.rows:
            key = f"{r.concept}|{r.site}"
            if r.baseline or key not in self.cavs:
                continue
            runs = torch.tensor(self.cavs[key], dtype=torch.float32)
            mean = runs.mean(0)
            mean = mean / mean.norm().clamp_min(1e-12)
            out.append(
                RecordDraft(
                    tensors={"cav": mean, "cav_runs": runs},
                    concept=r.concept,
                    description=f"TCAV concept activation vector ({self.conventions.get('mode')})",
                    kind="cav",
                    examples_fingerprint=r.examples_fingerprint,
                    model=self.model_ref,
                    site=r.site,
                    reduction=self.conventions.get("reduction"),
                    metrics={
                        "tcav_score": r.mean,
                        "tcav_std": r.std,
                        "p_value": r.p_value,
                        "significant": r.significant,
                        "cav_accuracy": r.cav_accuracy,
                        "cav_accuracy_min": r.cav_accuracy_min,
                        "low_quality": r.low_quality,
                        "test": str(self.conventions.get("test")),
                    },
                    tags=["tcav"],
                )
            )
        return out

