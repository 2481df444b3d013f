"""Hooks on plain torch modules: a module's input or output, with tuple outputs handled.

Modules in transformers 5 return tensors from decoder layers but tuples from attention; a hook
must hand back the same type it received (hook_points.md §3), which this does in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from conceptkit.handles import Handle


def _first(value: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The main tensor of a module input/output and a function that puts a new one back."""
    if isinstance(value, torch.Tensor):
        return value, lambda t: t
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        return value[0], lambda t: (t, *value[1:])
    if hasattr(value, "last_hidden_state"):  # ModelOutput
        def put(t: torch.Tensor) -> Any:
            value["last_hidden_state"] = t
            return value

        return value.last_hidden_state, put
    raise TypeError(f"cannot hook a module whose value is {type(value).__name__}")


def attach(
    module: torch.nn.Module,
    io: str,
    fn: Callable[[torch.Tensor], torch.Tensor | None],
    view_in: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    view_out: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda orig, new: new,
) -> Handle:
    """Call ``fn(view_in(tensor))`` on a module's ``input`` or ``output``; a return replaces it."""
    if io == "output":

        def fwd_hook(mod: torch.nn.Module, args: Any, output: Any) -> Any:
            tensor, put = _first(output)
            new = fn(view_in(tensor))
            return None if new is None else put(view_out(tensor, new))

        handle = module.register_forward_hook(fwd_hook)
    elif io == "input":

        def pre_hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                tensor, put = _first(args)
                new = fn(view_in(tensor))
                return None if new is None else (put(view_out(tensor, new)), kwargs)
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            tensor = kwargs[key]
            new = fn(view_in(tensor))
            if new is None:
                return None
            return args, {**kwargs, key: view_out(tensor, new)}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        raise ValueError(f"io must be 'input' or 'output', got {io!r}")
    return Handle(handle.remove, f"{io} hook on {type(module).__name__}")


def attach_norm_scale(
    module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None], kind: str, eps: float
) -> Handle:
    """The ``hook_scale`` of a norm module: ``sqrt(mean(x_c^2) + eps)`` ``[B, T, 1]`` (TL's divisor).

    The module computes its own scale internally, so a replacement ``s'`` is applied to its output:
    ``(out - bias) * s / s' + bias``, which equals the norm recomputed with ``s'`` (and carries
    the gradient with respect to ``s'``).
    """

    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        xc = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
        scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        new = fn(scale)
        if new is None:
            return None
        out, put = _first(output)
        bias = getattr(mod, "bias", None)
        if bias is None:
            return put(out * (scale / new))
        return put((out - bias) * (scale / new) + bias)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    return Handle(handle.remove, f"scale hook on {type(module).__name__}")


def hook_registry(module: torch.nn.Module, prefix: str = "") -> list[tuple[str, str, int]]:
    """Every torch hook registered anywhere in ``module``: ``(module path, kind, hook id)``.

    Leak tests compare this list before and after an operation, not just its length.
    """
    entries = []
    for name, sub in module.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            for hook_id in getattr(sub, kind, {}):
                entries.append((prefix + name, kind, int(hook_id)))
    return sorted(entries)
