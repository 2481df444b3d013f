"""ActivationReasoning configuration: the reference's ``LogicConfig`` knobs that we implement, with
conceptkit's defaults (paper semantics) and the reference code's conventions as switches."""

from __future__ import annotations

from typing import Literal, Union

import pydantic

import conceptkit as ck


class ARConfig(ck.MethodConfig):
    # -- stage 1: the dictionary ---------------------------------------------------------------
    site: str | None = pydantic.Field(None, description="site read by the SAE/vectors (default: resid_post of the middle block)")
    sae: str | None = pydantic.Field(
        None, description="'builtin' (ck.load_sae for this model and site), an SAE folder or store record id; none: concept vectors "
        "(mean differences of the activations) instead of SAE latents",
    )
    dictionary: str | None = pydantic.Field(None, description="a stored concept_dictionary record id (skips building)")
    vectors: dict[str, str] | None = pydantic.Field(
        None, description="concept name -> stored concept-vector record id (CAV, mean difference): a vector dictionary without an SAE; "
        "thresholds calibrated on examples when given, else 0",
    )
    examples: list[str] = pydantic.Field(default_factory=list, description="labelled example texts for building the dictionary")
    concepts: list[str] = pydantic.Field(default_factory=list, description="concept names (matched as words in the examples)")
    label: Literal["word", "sentence"] = "word"
    example_concepts: list[list[str]] | None = pydantic.Field(None, description="per example, its concepts (label=sentence)")
    concept_token: Literal["last", "all"] = "last"
    kind: Literal["top_k", "tree"] = "top_k"
    search_top_k: int = pydantic.Field(10, ge=1)
    order: Literal["unique_first", "unique_only", "original_order"] = "unique_first"
    mean_over: Literal["tokens", "samples"] = pydantic.Field("tokens", description="tokens (paper) or samples (reference code)")
    tree_depth: int | None = 5
    seed: int = 0
    # -- stage 2 -------------------------------------------------------------------------------
    top_output: int = pydantic.Field(2, ge=1, description="detection_top_k_output m")
    k_c: int = pydantic.Field(1, ge=1, description="concept_dictionary_top_k_concepts")
    allow_multi: bool = False
    threshold_for_rules: bool = pydantic.Field(True, description="False: the reference code's mask a > 0 (tau ignored)")
    scope: Literal["input", "output", "full_sequence"] = "input"
    # -- stage 3 -------------------------------------------------------------------------------
    rules: list[str] = pydantic.Field(default_factory=list, description="rules like 'red and white -> Poland'")
    rules_mode: Literal["forward_chaining", "legacy", "simple", "complex", "open_world"] = pydantic.Field(
        "forward_chaining", description="forward_chaining (paper); the reference code's reasoner_rules_checking modes legacy, simple, "
        "complex, open_world for parity (semantics in reasoner.py)",
    )
    # -- stage 4 -------------------------------------------------------------------------------
    alpha: float = pydantic.Field(0.5, description="steering_factor")
    steer_top_k: int = pydantic.Field(10, ge=1)
    weighting: Literal["log_decay", "uniform", "linear_decay", "exponential_decay", "inverse_position", "cosine_decay", "power_law_decay"] = "log_decay"
    norm: Union[Literal[1, 2], Literal["off"]] = 2
    methodology: Literal["sum_shift", "mean_shift", "max_shift"] = "sum_shift"
    use_dictionary_weights: bool = False
    # -- the prompts ---------------------------------------------------------------------------
    prompts: list[str] = pydantic.Field(default_factory=list)
    answers: list[str] | None = pydantic.Field(None, description="expected answer per prompt (substring of the generation)")
    max_new_tokens: int = pydantic.Field(5, ge=1)
    batch_size: int = pydantic.Field(8, ge=1)
