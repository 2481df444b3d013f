"""Activations of one prompt that linearisation and path patching need, on any backend.

``Trace`` holds, for one prompt, the residual stream before each block (``ln1`` input), between
attention and MLP (``ln2`` input), the MLP outputs, the final residual (``ln_final`` input) and the
attention patterns. Patterns come from ``blocks.{l}.attn.hook_pattern`` where the backend has it;
otherwise they are read exactly through the value/mixing sites: with the values at layer ``l``
replaced by one-hot rows (``v[s] = e_s``), the mixed values are ``z[t, h, s] = A[h, t, s]``,
because the pattern does not depend on the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from conceptkit.api import InputError


class _Stop(Exception):
    pass


@dataclass
class Trace:
    text: str
    input_ids: torch.Tensor  # [T]
    resid_pre: torch.Tensor  # [L, T, d]
    resid_mid: torch.Tensor  # [L, T, d]
    mlp_out: torch.Tensor  # [L, T, d]
    final_in: torch.Tensor  # [T, d]
    pattern: torch.Tensor | None  # [L, H, T, T]

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def position(self, token: int) -> int:
        """A node's token (negative: from the end) as a row index, checked."""
        t = token + self.n_tokens if token < 0 else token
        if not 0 <= t < self.n_tokens:
            raise InputError(f"token position {token} is out of range for the prompt {self.text!r} ({self.n_tokens} tokens)")
        return t


def _single(model: Any, text: str) -> Any:
    batch = model.tokenize([text])
    return batch


def trace(model: Any, text: str, with_pattern: bool = True, dtype: torch.dtype = torch.float32) -> Trace:
    """One forward (plus pattern reads) of ``text``; tensors detached, CPU, ``dtype``."""
    L = model.n_layers
    sites = [f"blocks.{l}.{k}" for l in range(L) for k in ("hook_resid_pre", "hook_resid_mid", "hook_mlp_out")]
    sites.append(f"blocks.{L - 1}.hook_resid_post")
    batch = _single(model, text)
    acts = model.capture(batch, sites, reduce="all", batch_size=1)
    stack = lambda kind: torch.stack([acts[f"blocks.{l}.{kind}"] for l in range(L)]).to(dtype)  # noqa: E731
    ids = batch.input_ids[0][batch.attention_mask[0].bool()]
    return Trace(
        text=text,
        input_ids=ids,
        resid_pre=stack("hook_resid_pre"),
        resid_mid=stack("hook_resid_mid"),
        mlp_out=stack("hook_mlp_out"),
        final_in=acts[f"blocks.{L - 1}.hook_resid_post"].to(dtype),
        pattern=attention_patterns(model, batch).to(dtype) if with_pattern else None,
    )


def _has_site(model: Any, site: str) -> bool:
    try:
        model.resolve_site(site)
        return True
    except Exception:  # noqa: BLE001 - unknown site: fall back
        return False


def attention_patterns(model: Any, batch: Any) -> torch.Tensor:
    """``[L, H, T, T]`` attention weights of a one-prompt batch (unpadded)."""
    L = model.n_layers
    keep = batch.attention_mask[0].bool()
    if all(_has_site(model, f"blocks.{l}.attn.hook_pattern") for l in range(L)):
        got: dict[int, torch.Tensor] = {}
        handles = []
        for l in range(L):
            def read(t: torch.Tensor, l: int = l) -> None:
                got[l] = t.detach()[0].float().cpu()

            handles.append(model.add_hook(f"blocks.{l}.attn.hook_pattern", read))
        try:
            model.run(batch, reduce="last")
        finally:
            for h in handles:
                h.remove()
        return torch.stack([got[l][:, keep][:, :, keep] for l in range(L)])
    return torch.stack([_pattern_by_one_hot_values(model, batch, l)[:, keep][:, :, keep] for l in range(L)])


def _pattern_by_one_hot_values(model: Any, batch: Any, layer: int) -> torch.Tensor:
    """``[H, T, T]`` at ``layer`` from forwards whose values are one-hot rows (chunks of ``d_h`` sources)."""
    T = batch.input_ids.shape[1]
    out: torch.Tensor | None = None
    start = 0
    while start < T:
        got: dict[str, torch.Tensor] = {}

        def set_v(v: torch.Tensor, start: int = start) -> torch.Tensor:
            d_h = v.shape[-1]
            new = torch.zeros_like(v)
            n = min(d_h, T - start)
            idx = torch.arange(n)
            new[:, start + idx, :, idx] = 1.0
            got["n"] = torch.tensor(n)
            return new

        def read_z(z: torch.Tensor) -> None:
            got["z"] = z.detach()[0].float().cpu()  # [T, H, d_h]
            raise _Stop

        h1 = model.add_hook(f"blocks.{layer}.attn.hook_v", set_v)
        h2 = model.add_hook(f"blocks.{layer}.attn.hook_z", read_z)
        try:
            model.run(batch, reduce="last")
        except _Stop:
            pass
        finally:
            h2.remove()
            h1.remove()
        if "z" not in got:
            raise InputError(f"attention pattern at layer {layer}: the value/mixing sites did not fire")
        n = int(got["n"])
        z = got["z"][:, :, :n].permute(1, 0, 2)  # [H, T, n]
        if out is None:
            out = torch.zeros(z.shape[0], T, T)
        out[:, :, start : start + n] = z
        start += n
    assert out is not None
    return out
