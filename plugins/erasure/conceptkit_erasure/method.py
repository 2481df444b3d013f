"""The ``erasure`` method: scrub a token-level concept from a causal LM and report what it cost."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

import pydantic

import conceptkit as ck
from conceptkit.api import InputError

if TYPE_CHECKING:  # torch and sklearn load when the method runs, not when plugins are listed
    from conceptkit.api import Handle
    from conceptkit_erasure.result import ErasureResult
    from conceptkit_erasure.scrub import Scrubber


class ErasureConfig(ck.MethodConfig):
    token_property: Literal["digit", "capitalised"] = pydantic.Field("digit", description="the token-level concept to erase")
    texts: list[str] | None = pydantic.Field(None, description="training/evaluation texts (default: the shipped digit corpus, 64 sentences; 160 with full)")
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
    report_sites: int | None = pydantic.Field(
        8, ge=2, description="probe accuracy before/after at this many sites, evenly spaced, first and last included (null: every site)"
    )
    full: bool = pydantic.Field(
        False, description="the full run: the 160-sentence corpus and probe reports at every site (tens of minutes for SmolLM2 on a CPU)"
    )
    model: str | None = None


def report_subset(sites: list[str], n: int | None) -> list[str]:
    """``n`` sites evenly spaced over ``sites`` (first and last included), or all of them."""
    if n is None or n >= len(sites):
        return list(sites)
    step = (len(sites) - 1) / (n - 1)
    return [sites[round(i * step)] for i in range(n)]


class Erasure(ck.ArtifactMethod):
    name = "erasure"
    description = "LEACE concept scrubbing of a causal LM, with probe accuracy and bits-per-byte before/after."
    Config = ErasureConfig
    requires = frozenset({ck.Capability.PYTHON_HOOKS})
    supports_ray = True  # the LEACE fit is a dataset pass per site (ck.dataset_moments); --ray runs it on workers

    def _data(self, model: ck.Model, config: ErasureConfig) -> tuple[list[str], list[list[int]]]:
        from conceptkit_erasure.corpus import digit_corpus, token_labels

        texts = config.texts or digit_corpus(160 if config.full else 64, seed=config.seed)
        labels = config.labels if config.labels is not None else token_labels(model, texts, config.token_property)
        if len(labels) != len(texts):
            raise InputError(f"{len(labels)} label lists for {len(texts)} texts: the lengths must match")
        return texts, [list(row) for row in labels]

    def fit(self, model: ck.Model, config: Any = None, store: Any = None) -> "Scrubber":
        from conceptkit.api import validate_config
        from conceptkit_erasure.scrub import fit_scrubber

        cfg = validate_config(self.Config, config, self.name)
        self.check(model)
        texts, labels = self._data(model, cfg)
        return fit_scrubber(model, texts, labels, cfg.sites, batch_size=cfg.batch_size, **self._leace(cfg))

    def apply(self, artifact: Any, model: ck.Model) -> "Handle":
        """Apply a :class:`Scrubber` or its stored tensors (``store.tensors(record_id)``)."""
        from conceptkit_erasure.scrub import Scrubber

        scrubber = artifact if isinstance(artifact, Scrubber) else Scrubber.from_tensors(artifact)
        return scrubber.apply(model)

    @staticmethod
    def _leace(cfg: ErasureConfig) -> dict[str, Any]:
        return dict(method=cfg.method, affine=cfg.affine, shrinkage=cfg.shrinkage, constrain_cov_trace=cfg.constrain_cov_trace, svd_tol=cfg.svd_tol)

    def compute(self, model: ck.Model, config: ErasureConfig, store: Any) -> "ErasureResult":
        import torch

        from conceptkit.api import holdout_accuracy
        from conceptkit_erasure.result import ErasureResult, SiteReport, bits_per_byte
        from conceptkit_erasure.scrub import default_sites, fit_scrubber, random_scrubber

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
            concept=config.concept or (config.token_property if config.labels is None else "concept"),
            n_train_tokens=len(train_z), n_test_tokens=len(test_z), positive_fraction=float((test_z > 0).double().mean()),
        )
        result.erased_sites = list(sites)
        result.add_input("texts", texts, model)  # provenance: the token ids the erasers were fitted and tested on
        erase = scrubber.interventions()
        sites = report_subset(sites, None if config.full else config.report_sites)  # erasers at every site, reports at these
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
        if not getattr(model, "is_encoder", False):  # bits per byte needs next-token logits
            result.bits_per_byte_before = bits_per_byte(model, test_texts, [], config.batch_size)
            result.bits_per_byte_after = bits_per_byte(model, test_texts, erase, config.batch_size)
            if config.random_baseline:
                result.bits_per_byte_random = bits_per_byte(model, test_texts, random_scrubber(scrubber, config.seed).interventions(), config.batch_size)
        result.tensors = {k: v.float() for k, v in scrubber.tensors().items()}
        return result
