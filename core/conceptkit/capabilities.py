"""Capabilities that backends offer and methods require."""

from __future__ import annotations

from enum import Enum


class Capability(str, Enum):
    """What a backend can do; a method lists the ones it needs in ``Method.requires``."""

    GRADIENTS = "gradients"  # gradients with respect to site activations
    WEIGHT_EDIT = "weight_edit"  # reversible in-place weight edits
    GENERATION = "generation"  # autoregressive generation with interventions
    PYTHON_HOOKS = "python_hooks"  # arbitrary Python code at a site during the forward
    REMOTE = "remote"  # the model runs elsewhere (nnsight remote, hosted providers)


def missing(required: frozenset[Capability] | set[Capability], offered: frozenset[Capability]) -> list[str]:
    """Names of required capabilities that are not offered, sorted for stable messages."""
    return sorted(c.value for c in set(required) - set(offered))
