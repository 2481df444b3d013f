"""TCAV configuration: every convention that differs between the paper, captum and TF is a field."""

from __future__ import annotations

from typing import Literal, Union

import pydantic

import conceptkit as ck

DEFAULT_OBJECTIVE = {"kind": "logit_diff", "positive": " positive", "negative": " negative"}
#: the default site's depth: the residual stream after the layer at 60% of the model's depth
DEFAULT_DEPTH = 0.6


class ConceptSpec(pydantic.BaseModel):
    """A concept given inline: a name and its example texts."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    examples: list[str]


class TGCAVConfig(pydantic.BaseModel):
    """GCAV/TGCAV (spec section 11): fuse one concept's per-layer CAVs into a global CAV."""

    model_config = pydantic.ConfigDict(extra="forbid")
    dim_align: Literal["identity", "autoencoder"] = pydantic.Field(
        "identity", description="per-layer maps into the shared space; identity when every site has the same width (LLMs)"
    )
    align: bool = pydantic.Field(
        False,
        description="cross-layer InfoNCE alignment (GCAV step 2). Off by default: on the synthetic stack it moved the mean "
        "score by more than 0.15 in 4 of 5 seeds (it pushes concept codes away from the random ones)",
    )
    fuse: Literal["attention", "mean", "none"] = pydantic.Field(
        "attention", description="attention: trained to minimise the variance of scores across layers; mean; none (TCAV with reconstructed CAVs)"
    )
    embed_dim: int = pydantic.Field(256, ge=8, description="shared-space width for dim_align=autoencoder")
    align_epochs: int = pydantic.Field(100, ge=0)
    fuse_epochs: int = pydantic.Field(30, ge=0)
    var_weight: float = pydantic.Field(3.0, ge=0, description="weight of the across-layer score variance in the fusion loss")
    sim_weight: float = pydantic.Field(1.0, ge=0, description="weight of the closeness to the per-layer CAVs in the fusion loss")
    sep_weight: float = pydantic.Field(
        3.0, ge=0,
        description="non-degeneracy: weight of the shortfall of the decoded global CAV's concept-vs-random accuracy below "
        "each layer's own CAV (0 = the reference's loss, which can settle on a direction that scores the same everywhere "
        "and carries no concept)",
    )
    tau: float = pydantic.Field(0.1, gt=0, description="InfoNCE temperature")
    seed: int = 0


class TCAVConfig(ck.MethodConfig):
    concepts: list[Union[str, ConceptSpec]] = pydantic.Field(
        ..., description="shipped concept names (conceptkit.concepts), text files, or {name, examples}"
    )
    targets: list[str] = pydantic.Field(..., description="target inputs whose output is explained")
    target_template: str = pydantic.Field("{}", description="format string applied to each target, e.g. 'Review: {}\\nSentiment:'")
    concept_template: str | None = pydantic.Field(
        None,
        description="format string applied to concept and random examples (default: target_template), so CAVs are "
        "read at the same kind of position as the gradients",
    )
    objective: dict = pydantic.Field(
        DEFAULT_OBJECTIVE, description="token_logit / logit_diff / loss objective at the last token"
    )
    sites: list[str] | None = pydantic.Field(
        None,
        description=f"sites to test (default: derived from the model: blocks.{{round({DEFAULT_DEPTH} * n_layers)}}.hook_resid_post, "
        "i.e. blocks.18.hook_resid_post on smollm2-135m)",
    )
    reduction: Literal["last", "mean"] = "last"
    relative: bool = pydantic.Field(False, description="relative TCAV: each concept against the union of the others")
    random_pool: Union[str, list[str]] = pydantic.Field("neutral", description="shipped set name, file, or list of texts")
    n_random: int = pydantic.Field(10, ge=2, description="runs per concept: random sets (or subsamples when relative)")
    random_size: int | None = pydantic.Field(
        None, ge=4, description="examples per random set (default: the concept's size, at most half the pool)"
    )
    subsample: float = pydantic.Field(0.8, gt=0, le=1, description="fraction of each set per run in relative mode")
    probe: Literal["mean_diff", "logistic", "sgd_hinge"] = pydantic.Field(
        "mean_diff",
        description="mean_diff (closed form, FastCAV; fast enough for the (n_null + 1) * n_random CAVs of the calibrated test), "
        "logistic (L2, exact batched solver; ~100x slower at 120 examples per class), sgd_hinge (captum/TF recipe)",
    )
    C: float = pydantic.Field(1.0, gt=0, description="inverse L2 strength of the logistic probe")
    standardize: bool | None = pydantic.Field(
        None, description="standardise activations before the probe (default: yes, except sgd_hinge, which the references run unscaled)"
    )
    balance: Literal["none", "truncate", "subsample", "class_weight"] = pydantic.Field(
        "subsample", description="equal class sizes per run: subsample (a fresh random draw per run), truncate (first N), class_weight, none"
    )
    test_size: float = pydantic.Field(0.33, gt=0, lt=1)
    normalize_cav: bool = True
    min_cav_accuracy: float = pydantic.Field(
        0.6, description="a concept with more than a quarter of its CAVs below this held-out accuracy is not tested; "
        "the same count is reported for the replays (the test's statistic uses all CAVs on both sides)"
    )
    gradient_of: Literal["target", "loss"] = pydantic.Field("target", description="paper/captum: target, count S>0; TF: loss, count S<0")
    test: Literal["auto", "monte_carlo", "two_sample_random", "one_sample_0.5"] = pydantic.Field(
        "auto",
        description="auto = monte_carlo: the whole experiment replayed n_null times with a pseudo-concept (from the pool, "
        "or label-permuted when relative), calibrated; two_sample_random (TF) and one_sample_0.5 (paper) are "
        "run-level t-tests kept for parity: ANTICONSERVATIVE (they treat runs sharing the concept's examples as independent)",
    )
    n_null: int = pydantic.Field(200, ge=19, description="Monte Carlo replays (the smallest reachable p is about 2 / (n_null + 1))")
    statistic: Literal["cosine", "score"] = pydantic.Field(
        "cosine",
        description="the Monte Carlo test's statistic: cosine = mean cos(gradient, CAV) over runs and targets (does not "
        "saturate when all targets' gradients point alike); score = the mean TCAV sign score, ties broken by the mean "
        "directional derivative. The reported score is always the sign score",
    )
    alternative: Literal["auto", "greater", "less"] = pydantic.Field(
        "auto", description="auto: report the side the data fall on and double the one-sided p; greater/less: one side only"
    )
    equal_var: bool = pydantic.Field(True, description="Student (true) or Welch t-test for two_sample_random")
    bonferroni: bool | None = pydantic.Field(None, description="Bonferroni over 2 hypotheses (default: on for the one-sample test)")
    alpha: float = pydantic.Field(0.05, gt=0, lt=1)
    seed: int = 0
    batch_size: int = pydantic.Field(16, ge=1)
    cache: bool = pydantic.Field(True, description="reuse activations and gradients from the disk cache (conceptkit tcav-cache info|clear)")
    tgcav: TGCAVConfig | None = pydantic.Field(None, description="also compute GCAV/TGCAV over the sites (needs >= 2 sites)")
    model: str | None = pydantic.Field(None, description="model name for the CLI (default smollm2-135m)")
