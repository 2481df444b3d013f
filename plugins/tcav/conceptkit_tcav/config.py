"""TCAV configuration: every convention that differs between the paper, captum and TF is a field."""

from __future__ import annotations

from typing import Literal, Union

import pydantic

import conceptkit as ck


class ConceptSpec(pydantic.BaseModel):
    """A concept given inline: a name and its example texts."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    examples: list[str]


class TCAVConfig(ck.MethodConfig):
    concepts: list[Union[str, ConceptSpec]] = pydantic.Field(
        ..., description="shipped concept names (conceptkit.concepts), text files, or {name, examples}"
    )
    targets: list[str] = pydantic.Field(..., description="target inputs whose output is explained")
    target_template: str = pydantic.Field("{}", description="format string applied to each target, e.g. 'Review: {}\\nSentiment:'")
    objective: dict = pydantic.Field(
        default_factory=lambda: {"kind": "logit_diff", "positive": " positive", "negative": " negative"},
        description="token_logit / logit_diff / loss objective at the last token",
    )
    sites: list[str] = pydantic.Field(default_factory=lambda: ["blocks.18.hook_resid_post"])
    reduction: Literal["last", "mean"] = "last"
    relative: bool = pydantic.Field(False, description="relative TCAV: each concept against the union of the others")
    random_pool: Union[str, list[str]] = pydantic.Field("neutral", description="shipped set name, file, or list of texts")
    n_random: int = pydantic.Field(20, ge=2, description="random runs (random sets, or subsamples when relative)")
    random_size: int | None = pydantic.Field(None, ge=4, description="examples per random set (default: concept size, capped by the pool)")
    subsample: float = pydantic.Field(0.8, gt=0, le=1, description="fraction of each set per run in relative mode")
    probe: Literal["logistic", "sgd_hinge", "mean_diff"] = "logistic"
    standardize: bool | None = pydantic.Field(None, description="standardise activations before the probe (default: logistic yes, others no)")
    balance: Literal["none", "truncate", "class_weight"] = "truncate"
    test_size: float = pydantic.Field(0.33, gt=0, lt=1)
    normalize_cav: bool = True
    min_cav_accuracy: float = pydantic.Field(0.6, description="CAVs below this held-out accuracy are flagged as near chance")
    gradient_of: Literal["target", "loss"] = pydantic.Field("target", description="paper/captum: target, count S>0; TF: loss, count S<0")
    test: Literal["auto", "two_sample_random", "one_sample_0.5", "random_anchors"] = pydantic.Field(
        "auto",
        description="auto: two-sample vs random-random runs (TF; relative: one-sample vs 0.5); "
        "random_anchors: calibrated test against every random set used as a pseudo-concept",
    )
    equal_var: bool = True
    bonferroni: bool | None = pydantic.Field(None, description="Bonferroni over 2 hypotheses (default: on for the one-sample test)")
    alpha: float = pydantic.Field(0.05, gt=0, lt=1)
    seed: int = 0
    batch_size: int = pydantic.Field(16, ge=1)
    model: str | None = pydantic.Field(None, description="model name for the CLI (default smollm2-135m)")
