"""ObsProp configuration: observables, path nodes and every convention of the spec as a field.

Light module (pydantic only): the plugin registry imports it without loading torch.
"""

from __future__ import annotations

from typing import Literal, Union

import pydantic

import conceptkit as ck

Token = Union[int, str]


class Observable(pydantic.BaseModel):
    """A linear functional on the logits: ``n = sum(positive) - sum(negative)`` or explicit weights.

    Words are mapped to their *first* token (the reference convention); a word that is more than
    one token raises a warning (:class:`~conceptkit_obsprop.observables.MultiTokenWarning`).
    ``weights`` maps tokens (strings) or token ids (ints) to coefficients and is added to the
    positive/negative one-hots.
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str | None = pydantic.Field(None, description="label used in tables and records (default: 'pos - neg')")
    positive_tokens: list[Token] = pydantic.Field(default_factory=list)
    negative_tokens: list[Token] = pydantic.Field(default_factory=list)
    weights: dict[Token, float] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _not_empty(self) -> "Observable":
        if not (self.positive_tokens or self.negative_tokens or self.weights):
            raise ValueError("an observable needs positive_tokens, negative_tokens or weights")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        pos = "+".join(repr(t) for t in self.positive_tokens)
        neg = "+".join(repr(t) for t in self.negative_tokens)
        extra = f" (+{len(self.weights)} weighted)" if self.weights else ""
        return f"{pos or '0'} - {neg or '0'}{extra}"


class Node(pydantic.BaseModel):
    """One computational step of a path.

    ``sublayer`` is ``attn`` (a head's OV circuit; ``head`` an int, a list of heads, or -1 for all)
    or ``mlp``. ``token`` is the position (in the linearisation prompts; negative counts from the
    end) where the node reads its input: the source token of a head, the token of an MLP.
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    layer: int = pydantic.Field(..., ge=0)
    sublayer: Literal["attn", "mlp"]
    head: Union[int, list[int], None] = None
    token: int = -1

    @pydantic.model_validator(mode="after")
    def _head(self) -> "Node":
        if self.sublayer == "attn" and self.head is None:
            raise ValueError(f"attention node at layer {self.layer} needs a head (an int, a list, or -1 for all)")
        if self.sublayer == "mlp" and self.head not in (None, -1):
            raise ValueError(f"MLP node at layer {self.layer} takes no head (got {self.head!r})")
        return self

    @property
    def label(self) -> str:
        if self.sublayer == "mlp":
            return f"mlp{self.layer}@{self.token}"
        head = "all" if self.head == -1 else (",".join(map(str, self.head)) if isinstance(self.head, list) else self.head)
        return f"attn{self.layer}.{head}@{self.token}"


class PathSearch(pydantic.BaseModel):
    """Greedy path patching from the prompt pair (``patch_get_max_paths``)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    max_length: int = pydantic.Field(3, ge=1, le=12)
    num_paths: int = pydantic.Field(10, ge=1)
    use_mlp: bool = True
    use_attn: bool = True


class ObsPropConfig(ck.MethodConfig):
    observables: list[Observable] = pydantic.Field(..., min_length=1, description="one feature per (observable, path)")
    paths: list[list[Node]] = pydantic.Field(
        default_factory=list,
        description="explicit paths, each latest node first; empty: the top_k heads of the data-free ranking (one-node paths)",
    )
    ln_mode: Literal["approx", "tangent", "none"] = pydantic.Field(
        "approx", description="final norm: sqrt(d)/|x| gamma (approx), exact gradient at the projected boundary point (tangent), or skipped"
    )
    node_norm: Literal["none", "approx", "exact"] = pydantic.Field(
        "none", description="the norm feeding each node (ln1 for attention, ln2 for MLP): skipped (reference default), approximated, or its exact gradient"
    )
    mlp_mode: Literal["tangent", "fake"] = pydantic.Field("tangent", description="fake (identity nonlinearity) only for non-gated MLPs")
    normalize: bool = True
    prompt_pair: list[str] | None = pydantic.Field(
        None, min_length=2, max_length=2,
        description="[positive, negative] prompt of equal token length: linearisation points and path search",
    )
    top_k: int = pydantic.Field(10, ge=1, description="heads in the ranking table (and default paths)")
    path_search: PathSearch | None = pydantic.Field(None, description="greedy path patching (needs prompt_pair)")
    tangent_prompt: Literal["positive", "negative"] = pydantic.Field("positive", description="whose final residual seeds the ln_f projection")
    weights_processed: bool = pydantic.Field(False, description="record only: the model's gains are folded into its weights")
    model: str | None = pydantic.Field(None, description="model name for the CLI (default smollm2-135m)")
