"""The ``erasure`` method: scrub a token-level concept from a causal LM and report what it cost."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import pydantic
import torch

import conceptkit as ck
from conceptkit.errors import InputError
from conceptkit.handles import Handle
from conceptkit.probes import holdout_accuracy
from conceptkit.store.record import MethodInfo, RecordDraft
from conceptkit_erasure.corpus import digit_corpus, token_labels
from conceptkit_erasure.scrub import Scrubber, default_sites, fit_scrubber, random_scrubber


class ErasureConfig(ck.MethodConfig):
    token_property: Literal["digit", "capitalised"] = pydantic.Field("digit", description="the token-level concept to erase")
    texts: list[str] | None = pydantic.Field(None, description="training/evaluation texts (default: the shipped digit corpus)")
    labels: list[list[int]] | None = pydantic.Field(None, description="per-token class ids for `texts` (overrides token_property)")
    concept: str | None = pydantic.Field(None, description="concept name for the store (default: the property)")
    test_fraction: float = pydantic.Field(0.375, gt=0, lt=1)
    sites: list[str] | None = pydantic.Field(None, description="default: every ln1/ln2 output")
    method: Literal["leace", "orth"] = "leace"
    affine: bool = True
    shrinkage: bool = True
    constrain_cov_trace: bool = True
    svd_tol: float = pydantic.Field(0.01, gt=0)
    random_baseline: bool = True
    seed: int = 0
    batch_size: int = pydantic.Field(16, ge=1)
    model: str | None = None


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
    bits_per_byte_before: float = math.nan
    bits_per_byte_after: float = math.nan
    bits_per_byte_random: float | None = None
    n_train_tokens: int = 0
    n_test_tokens: int = 0
    positive_fraction: float = 0.0
    tensors: dict[str, Any] = pydantic.Field(default_factory=dict, repr=False, exclude=True)

    def summary(self) -> str:
        lines = [
            f"concept scrubbing of {self.concept!r}: {len(self.sites)} sites, {self.n_train_tokens} training and "
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
            method=MethodInfo(name="erasure", plugin="erasure", distribution="conceptkit-erasure", config=self.config),
            model=self.model_ref,
            site=",".join(r.site for r in self.sites),
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


def _bits_per_byte(model: ck.Model, texts: list[str], interventions: list, batch_size: int) -> float:
    nll, _ = model.nll(texts, interventions, batch_size=batch_size)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return float(nll.sum() / math.log(2) / n_bytes)


class Erasure(ck.ArtifactMethod):
    name = "erasure"
    description = "LEACE concept scrubbing of a causal LM, with probe accuracy and bits-per-byte before/after."
    Config = ErasureConfig
    requires = frozenset({ck.Capability.PYTHON_HOOKS})

    def _data(self, model: ck.Model, config: ErasureConfig) -> tuple[list[str], list[list[int]]]:
        texts = config.texts or digit_corpus(160, seed=config.seed)
        labels = config.labels if config.labels is not None else token_labels(model, texts, config.token_property)
        if len(labels) != len(texts):
            raise InputError(f"{len(labels)} label lists for {len(texts)} texts: the lengths must match")
        return texts, [list(row) for row in labels]

    def fit(self, model: ck.Model, config: Any = None, store: Any = None) -> Scrubber:
        from conceptkit.contract import validate_config

        cfg = validate_config(self.Config, config, self.name)
        self.check(model)
        texts, labels = self._data(model, cfg)
        return fit_scrubber(model, texts, labels, cfg.sites, batch_size=cfg.batch_size, **self._leace(cfg))

    def apply(self, artifact: Scrubber | dict[str, torch.Tensor], model: ck.Model) -> Handle:
        scrubber = artifact if isinstance(artifact, Scrubber) else Scrubber.from_tensors(artifact)
        return scrubber.apply(model)

    @staticmethod
    def _leace(cfg: ErasureConfig) -> dict[str, Any]:
        return dict(method=cfg.method, affine=cfg.affine, shrinkage=cfg.shrinkage, constrain_cov_trace=cfg.constrain_cov_trace, svd_tol=cfg.svd_tol)

    def compute(self, model: ck.Model, config: ErasureConfig, store: Any) -> ErasureResult:
        texts, labels = self._data(model, config)
        sites = config.sites or default_sites(model)
        order = list(range(len(texts)))
        random.Random(config.seed).shuffle(order)
        n_test = max(1, int(len(texts) * config.test_fraction))
        test_idx, train_idx = order[:n_test], order[n_test:]
        train_texts, test_texts = [texts[i] for i in train_idx], [texts[i] for i in test_idx]
        train_z = torch.tensor([c for i in train_idx for c in labels[i]])
        test_z = torch.tensor([c for i in test_idx for c in labels[i]])

        scrubber = fit_scrubber(model, train_texts, [labels[i] for i in train_idx], sites, batch_size=config.batch_size, **self._leace(config))
        result = ErasureResult(
            concept=config.concept or config.token_property if config.labels is None else (config.concept or "concept"),
            n_train_tokens=len(train_z), n_test_tokens=len(test_z), positive_fraction=float((test_z > 0).double().mean()),
        )
        erase = scrubber.interventions()
        for start in range(0, len(sites), 12):  # a dozen sites at a time keeps memory bounded
            chunk = sites[start : start + 12]
            before_tr = model.capture(train_texts, chunk, reduce="all", batch_size=config.batch_size)
            before_te = model.capture(test_texts, chunk, reduce="all", batch_size=config.batch_size)
            after_tr = model.capture(train_texts, chunk, reduce="all", interventions=erase, batch_size=config.batch_size)
            after_te = model.capture(test_texts, chunk, reduce="all", interventions=erase, batch_size=config.batch_size)
            for site in chunk:
                change = (after_te[site].double() - before_te[site].double()).pow(2).sum(-1).mean()
                result.sites.append(SiteReport(
                    site=site,
                    rank=scrubber.rank(site),
                    probe_accuracy_before=holdout_accuracy(before_tr[site], train_z, before_te[site], test_z),
                    probe_accuracy_after=holdout_accuracy(after_tr[site], train_z, after_te[site], test_z),
                    mean_sq_change=float(change),
                    mean_sq_norm=float(before_te[site].double().pow(2).sum(-1).mean()),
                ))
        if model.capabilities and getattr(model, "is_encoder", False) is False:
            result.bits_per_byte_before = _bits_per_byte(model, test_texts, [], config.batch_size)
            result.bits_per_byte_after = _bits_per_byte(model, test_texts, erase, config.batch_size)
            if config.random_baseline:
                result.bits_per_byte_random = _bits_per_byte(model, test_texts, random_scrubber(scrubber, config.seed).interventions(), config.batch_size)
        result.tensors = {k: v.float() for k, v in scrubber.tensors().items()}
        return result
