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
    mean: float  # mean sign score (all CAVs under monte_carlo; the kept ones under the t-test options)
    std: float
    p_value: float  # NaN when no test was possible (see test_note)
    significant: bool
    direction: str = ""  # "above" / "below" the null (random sets, or permuted labels when relative); "" untested
    tested: bool = True
    test_note: str = ""  # why no test was possible, when it was not
    p_greater: float = float("nan")  # one-sided Monte Carlo p-values
    p_less: float = float("nan")
    magnitude_mean: float
    magnitude_ratio: float
    cosine_mean: float = float("nan")  # mean cos(gradient, CAV): the default Monte Carlo statistic
    cav_accuracy: float  # mean held-out accuracy over runs
    cav_accuracy_min: float
    low_quality: bool  # more than a quarter of the CAVs at chance: not tested
    n_chance_cavs: int = 0  # concept CAVs below min_cav_accuracy (more than a quarter: not tested)
    n_runs: int = 0
    scores: list[float]
    baseline: bool = False  # kept for old records; no baseline rows are produced now
    examples_fingerprint: str | None = None
    random_side: dict[str, Any] = pydantic.Field(default_factory=dict)  # null/baseline CAVs: n_dropped, n_cavs, mean, std
    same_test_as: str | None = None  # relative pair: the row whose test this row mirrors


class TCAVResult(ck.Result):
    rows: list[TCAVRow] = pydantic.Field(default_factory=list)
    conventions: dict[str, Any] = pydantic.Field(default_factory=dict)
    n_targets: int = 0
    cavs: dict[str, list[list[float]]] = pydantic.Field(default_factory=dict, repr=False)  # "concept|site" -> runs x d
    cav_accuracies: dict[str, list[float]] = pydantic.Field(default_factory=dict, repr=False)
    tgcav: dict[str, dict[str, Any]] = pydantic.Field(default_factory=dict)  # concept -> per-layer TCAV/TGCAV means, statistics

    def row(self, concept: str, site: str | None = None) -> TCAVRow:
        for r in self.rows:
            if r.concept == concept and (site is None or r.site == site):
                return r
        raise KeyError(f"no row for concept {concept!r} at site {site!r}")

    def summary(self) -> str:
        c = self.conventions
        relative = c.get("mode") == "relative"
        null = "permuted labels" if relative else "random"
        test = c.get("test")
        head = f"TCAV on {self.n_targets} target inputs, {c.get('n_random')} runs, probe {c.get('probe')}, gradient of {c.get('gradient_of')} (counting {c.get('counted_sign')})"
        if test == "monte_carlo":
            how = (f"test: monte_carlo, {c.get('n_null')} replays with " + ("label-permuted concepts" if relative else "pseudo-concepts drawn from the pool")
                   + f", alternative {c.get('alternative')}, alpha {c.get('alpha')} (calibrated); statistic {c.get('statistic', '')}")
        else:
            how = f"test: {test}, alpha {c.get('threshold'):.3g} -- ANTICONSERVATIVE: {c.get('test_note')}"
        lines = [head, how]
        if c.get("position_warning"):
            lines.append("warning: " + c["position_warning"])
        lines.append(f"{'concept':<22} {'site':<26} {'score':>6} {'± std':>6}  {'direction':<22} {'p-value':>8}  sig  {'CAV acc':>7}  dropped c/r")
        for r in self.rows:
            if r.baseline:
                continue
            side = r.random_side or {}
            dropped = f"{r.n_chance_cavs}/{r.n_runs} {side.get('n_dropped', 0)}/{side.get('n_cavs', 0)}"
            if r.tested:
                direction = f"{r.direction} {null}"
                p = f"{r.p_value:8.2e}"
                flag = "yes" if r.significant else "no "
            else:
                direction, p, flag = "-", f"{'-':>8}", " - "
            lines.append(f"{r.concept:<22} {r.site:<26} {r.mean:6.3f} {r.std:6.3f}  {direction:<22} {p}  {flag}  {r.cav_accuracy:7.3f}  {dropped}")
            if r.same_test_as:
                lines.append(f"{'':<22} (the same test as {r.same_test_as}, seen from the other side: one hypothesis, reported once)")
            if not r.tested:
                lines.append(f"{'':<22} not tested: {r.test_note}")
        lines.append("dropped c/r: CAVs below min_cav_accuracy on the concept side / on the " + ("null (permuted) side" if relative else "random side (replays or baseline)")
                     + f"; the same rule ({c.get('min_cav_accuracy')}) on both sides: {c.get('quality_gate', '')}")
        if test == "monte_carlo" and not relative:
            lines.append("random side: pseudo-concepts from the pool scored "
                         + ", ".join(f"{r.random_side.get('mean', float('nan')):.3f} ± {r.random_side.get('std', float('nan')):.3f} ({r.concept})" for r in self.rows if r.random_side and r.tested))
            lines.append("cos(gradient, CAV): concept vs pseudo-concepts "
                         + ", ".join(f"{r.cosine_mean:+.4f} vs {r.random_side.get('statistic_mean', float('nan')):+.4f} ± {r.random_side.get('statistic_std', float('nan')):.4f} ({r.concept})"
                                     for r in self.rows if r.random_side and r.tested) if c.get("statistic", "").startswith("cosine") else
                         "replays' quality gate: " + ", ".join(f"{r.random_side.get('n_gated', 0)}/{r.random_side.get('n_replays', 0)} would not be tested ({r.concept})"
                                                               for r in self.rows if r.random_side and r.tested))
        for name, t in self.tgcav.items():
            lines.append(f"GCAV/TGCAV for {name} (CAVs of all runs scored at every site; TGCAV: one fused global CAV per run, decoded per layer):")
            acc_t, acc_g = t.get("accuracy_tcav"), t.get("accuracy_tgcav")
            if acc_t and acc_g:
                lines.append(f"  {'site':<26} {'TCAV':>6} {'TGCAV':>6}   concept-vs-random accuracy: layer CAVs / decoded global CAV")
                for site, a, b, x, y in zip(t["sites"], t["tcav"], t["tgcav"], acc_t, acc_g):
                    lines.append(f"  {site:<26} {a:6.3f} {b:6.3f}   {x:.3f} / {y:.3f}")
            else:
                lines.append(f"  {'site':<26} {'TCAV':>6} {'TGCAV':>6}")
                for site, a, b in zip(t["sites"], t["tcav"], t["tgcav"]):
                    lines.append(f"  {site:<26} {a:6.3f} {b:6.3f}")
            for key in ("tcav", "tgcav"):
                st = t["statistics"][key]
                lines.append(f"  {key.upper():<6} across layers: mean {st['mean']:.3f}  Std {st['std']:.3f}  CV {st['cv']:.3f}  RR {st['rr']:.3f}")
        if relative:
            lines.append("Relative TCAV measures the sign of the output's sensitivity along each concept-vs-others direction, not class "
                         "membership: targets of either class can all score 1.00.")
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
                        "p_value": r.p_value if r.tested else None,
                        "significant": r.significant,
                        "cav_accuracy": r.cav_accuracy,
                        "cav_accuracy_min": r.cav_accuracy_min,
                        "low_quality": r.low_quality,
                        "tested": r.tested,
                        "direction": r.direction,
                        "test_note": r.test_note,
                        "n_dropped_concept": r.n_chance_cavs,
                        "n_dropped_random": int((r.random_side or {}).get("n_dropped", 0)),
                        "test": str(self.conventions.get("test")),
                    },
                    tags=["tcav"],
                )
            )
        return out

