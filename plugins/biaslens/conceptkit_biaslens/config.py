"""BiasLens configuration. Every default is a design choice of this project (the paper's code is
not public; ``shared/methods/biaslens.md`` section 4) and is recorded in each result."""

from __future__ import annotations

from typing import Literal, Union

import pydantic

import conceptkit as ck


class ConceptSpec(pydantic.BaseModel):
    """A concept given inline (examples), or read from CAV records already in the store."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str
    examples: list[str] = pydantic.Field(default_factory=list, description="probe sentences that express the concept")
    prompts: list[str] = pydantic.Field(default_factory=list, description="prompts for the behavioural measure (targets only)")
    from_store: bool = pydantic.Field(False, description="use the newest stored vector of this concept at each site instead of fitting")


class BehaviourSpec(pydantic.BaseModel):
    """Behavioural bias: log-probability of the first reference's words minus the second's,
    summed over each word list (log-sum-exp), at the next token after each target prompt."""

    model_config = pydantic.ConfigDict(extra="forbid")
    positive_tokens: list[str] = pydantic.Field(..., min_length=1, description="words favouring the first reference (one token each)")
    negative_tokens: list[str] = pydantic.Field(..., min_length=1, description="words favouring the second reference")


ConceptRef = Union[str, ConceptSpec]


class BiasLensConfig(ck.MethodConfig):
    study: Literal["occupations", "aspects"] | None = pydantic.Field(
        None, description="a shipped study: fills targets, references and behaviour (occupations: male/female; aspects: sentiment)"
    )
    targets: list[ConceptRef] = pydantic.Field(default_factory=list, description="target concepts: shipped names, files or {name, examples, prompts}")
    references: list[ConceptRef] = pydantic.Field(default_factory=list, description="two or more reference concepts (the first is 'favoured' when the bias is positive)")
    behaviour: BehaviourSpec | None = pydantic.Field(None, description="measure behavioural bias on each target's prompts and validate against it")
    layers: list[int] | None = pydantic.Field(None, description="blocks to analyse at hook_resid_post (default: every block)")
    n_pos: int = pydantic.Field(200, ge=4, description="probe sentences per concept (fewer available: all, with a warning)")
    n_neg: int = pydantic.Field(200, ge=4, description="negative sentences per concept, from the negative pool")
    negative_pool: Union[str, list[str]] = pydantic.Field("neutral", description="shipped set, file or list of generic sentences")
    negatives: Literal["shared", "disjoint"] = pydantic.Field("shared", description="one shared negative sample, or a disjoint slice per concept")
    remove_mean_cav: bool = pydantic.Field(False, description="remove the mean CAV across all concepts per layer (spec pitfall 3)")
    probe_C: float = pydantic.Field(1.0, gt=0, description="inverse L2 regularisation of the logistic probe")
    standardize: bool = pydantic.Field(False, description="standardise activations before the probe (off: the spec's plain logistic regression; per-dimension scaling tilts the CAV)")
    test_size: float = pydantic.Field(0.2, gt=0, lt=1, description="held-out fraction for probe accuracy")
    sae_option: Literal["none", "a", "b", "c"] = pydantic.Field(
        "none", description="SAE representation: a = top-k decoder projections of the CAV, b = code of mean(P) - code of mean(N), c = code of the scaled CAV, none = the CAV"
    )
    sae_topk: int = pydantic.Field(64, ge=1, description="entries kept in the SAE representation")
    saes: dict[int, str] = pydantic.Field(default_factory=dict, description="layer -> SAE (store record id or SAELens/sparsify folder)")
    score: Literal["diff", "std"] = pydantic.Field("diff", description="diff: align_1 - align_2; std: population std over references")
    min_probe_accuracy: float = pydantic.Field(0.8, ge=0, le=1, description="layers where any involved probe is below this are flagged, not averaged")
    bootstrap: int = pydantic.Field(1000, ge=0, description="bootstrap draws for the validation's confidence interval")
    seed: int = 0
    batch_size: int = pydantic.Field(16, ge=1)
    model: str | None = pydantic.Field(None, description="model name for the CLI (default smollm2-135m)")
