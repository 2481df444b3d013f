"""ROCR configuration: every convention where the reference and conceptkit differ is a field."""

from __future__ import annotations

from typing import Literal

import pydantic

import conceptkit as ck


class RocrConfig(ck.MethodConfig):
    target: str = pydantic.Field(..., description="the concept to unlearn, e.g. 'Albert Einstein'")
    harmless: str = pydantic.Field(..., description="the concept it is redirected to (the reference uses 'Donald Trump' for every target; prefer a neutral one)")
    layers: list[int] | None = pydantic.Field(None, description="consecutive edit layers (default [4, 5, 6], as for Llama-3-8B; the first three layers on models with fewer than 8)")
    z_layer: int | None = pydantic.Field(None, description="layer whose block output is the value (default: the last edit layer)")
    l2: float = pydantic.Field(1.0, ge=0, description="ridge lambda of the closed form (reference: 1; GPT-2-XL: 10)")
    nullspace_threshold: float | None = pydantic.Field(2e-2, ge=0, description="absolute eigenvalue threshold of the preserved-key second moment (reference 2e-2)")
    nullspace_relative: float | None = pydantic.Field(None, ge=0, lt=1, description="relative threshold (fraction of the largest eigenvalue); the larger of the two applies")
    mode: Literal["unrelated", "reject", "noise"] = pydantic.Field("unrelated", description="value: the harmless concept's hidden state, an optimised refusal, or noise")
    value_context: Literal["bare", "templates"] = pydantic.Field("bare", description="where the current value h is read: the bare '<target>.' prompt (reference) or the chat templates")
    z_context: Literal["first", "templates"] = pydantic.Field("first", description="unrelated mode: z read in the first context template (reference) or averaged over all of them")
    templates: Literal["auto", "chat", "plain"] = pydantic.Field("auto", description="context templates for keys and z: the chat template when the tokenizer has one")
    stats_corpus: Literal["default", "none"] = pydantic.Field("default", description="preserved text: the core's offline corpus (conceptkit.sae.corpus, train split), or only stats_texts")
    stats_texts: list[str] | None = pydantic.Field(None, description="extra preserved texts (appended)")
    stats_chars: int = pydantic.Field(160_000, ge=0, description="characters of the offline corpus to use (paragraphs round-robin over its sources; ~40k SmolLM2 tokens)")
    reject_target: str = pydantic.Field(" Unfortunately", description="reject/noise modes: the refusal the optimised value should produce")
    v_lr: float = pydantic.Field(0.1, gt=0)
    v_steps: int = pydantic.Field(25, ge=1)
    v_weight_decay: float = pydantic.Field(0.5, ge=0)
    clamp_norm_factor: float = pydantic.Field(1.0, gt=0)
    v_stop_loss: float | None = pydantic.Field(5e-2, ge=0, description="reject/noise modes: stop optimising the value once its total loss is below this (reference 0.05; None: always v_steps - 1 updates)")
    kl_factor: float = pydantic.Field(0.125, ge=0, description="reject/noise modes: weight of KL(p_delta || p_0) on '<target> is a' (reference 0.125)")
    eval_format: Literal["plain", "chat", "chat_instruct", "chat_restate"] = pydantic.Field("plain", description="how the evaluation asks: plain text, or (as the reference) each form as the chat template's user turn followed by 'Answer:'; chat_instruct adds the reference's instruction lines; chat_restate (not the reference's) restates a completion form after 'Answer:'")
    evaluate: bool = pydantic.Field(True, description="evaluate across forms when the target is one of the shipped entities")
    baseline: bool = pydantic.Field(False, description="also run and evaluate the gradient-ascent baseline")
    ga_lr: float = pydantic.Field(2e-5, gt=0, description="gradient-ascent baseline: Adam learning rate")
    ga_steps: int = pydantic.Field(5, ge=1, description="gradient-ascent baseline: steps on the training form")
    ray: bool | str | None = pydantic.Field(None, description="preserved-key statistics over Ray (conceptkit.scale.dataset_moments): True/'local', a cluster address, or None to follow `conceptkit run --ray`")
    seed: int = 0
    batch_size: int = pydantic.Field(16, ge=1)
    model: str | None = pydantic.Field(None, description="model name for the CLI (default smollm2-135m)")

    def resolved_layers(self, n_layers: int) -> list[int]:
        if self.layers is not None:
            return list(self.layers)
        return [4, 5, 6] if n_layers >= 8 else list(range(min(3, n_layers)))
