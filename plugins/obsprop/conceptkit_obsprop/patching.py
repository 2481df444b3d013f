"""Path patching with ``only_patch_ov`` and the greedy search over paths (spec step 8).

A path is patched from the positive (clean) prompt to the negative one along the path only: the
earliest component reads the negative prompt's residual at its token, each later component
recomputes its norm on the clean residual plus the incoming difference, heads mix values with
the *clean* attention pattern (``only_patch_ov``), MLPs are run for real, and the score is the
change ``y·clean - y·dirty`` of the final residual at the last token (``no_ln_f=True``), with
``y`` the feature after the final norm. All of it is computed from cached activations and the
weights, batched over candidates, so no forward pass runs per candidate.

Deviations from the reference ``patch_get_max_paths`` (off-by-one ranges there): upstream of an
attention node at layer ``l`` the candidates are heads and MLPs of layers ``< l``; upstream of an
MLP at ``l`` heads of layers ``<= l`` and MLPs ``< l``; upstream of the output every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptkit.api import InputError
from conceptkit_obsprop.circuit import Circuit
from conceptkit_obsprop.config import Node
from conceptkit_obsprop.trace import Trace


@dataclass(frozen=True)
class Comp:
    """A component in patching order (earliest first); ``sublayer`` may be ``embedding``."""

    layer: int
    sublayer: str  # attn | mlp | embedding
    head: int  # -1: all heads (MLP, embedding: -1)
    token: int  # row index (non-negative)

    def node(self, n_tokens: int) -> Node | None:
        if self.sublayer == "embedding":
            return None
        return Node(layer=self.layer, sublayer=self.sublayer, head=self.head if self.sublayer == "attn" else None,  # type: ignore[arg-type]
                    token=self.token - n_tokens)

    @property
    def label(self) -> str:
        if self.sublayer == "embedding":
            return f"embedding@{self.token}"
        if self.sublayer == "mlp":
            return f"mlp{self.layer}@{self.token}"
        return f"attn{self.layer}.{self.head}@{self.token}"


@dataclass
class PatchedPath:
    comps: list[Comp]  # earliest first
    contrib: float

    def nodes(self, n_tokens: int) -> list[Node]:
        """Latest first, as conceptkit paths are written (tokens counted from the end)."""
        return [n for c in reversed(self.comps) if (n := c.node(n_tokens)) is not None]

    @property
    def label(self) -> str:
        return " <= ".join(c.label for c in reversed(self.comps))


class Patcher:
    """Path-patching scores for one (positive, negative) prompt pair."""

    def __init__(self, circuit: Circuit, pos: Trace, neg: Trace, y_final: torch.Tensor) -> None:
        if pos.n_tokens != neg.n_tokens:
            raise InputError(f"path patching needs prompts of equal token length; got {pos.n_tokens} and {neg.n_tokens}")
        if pos.pattern is None:
            raise InputError("path patching needs the positive prompt's attention patterns")
        self.c, self.pos, self.neg = circuit, pos, neg
        self.y = y_final.to(circuit.dtype)
        self.T = pos.n_tokens
        self.last = self.T - 1
        self._memo: dict[tuple, torch.Tensor] = {}  # candidate output differences by (kind, layer, row)

    # -- propagating a difference along a path -----------------------------------------------------
    def _through(self, comp: Comp, delta: torch.Tensor, out_row: int) -> torch.Tensor:
        """Output difference of ``comp`` at ``out_row`` for input differences ``delta [N, d]`` at its token."""
        c, l, t = self.c, comp.layer, comp.token
        if comp.sublayer == "embedding":
            return delta
        if comp.sublayer == "mlp":
            base = self.pos.resid_mid[l, t]
            return c.mlp(l, c.norm("ln2", l, base + delta)) - c.mlp(l, c.norm("ln2", l, base))
        base = self.pos.resid_pre[l, t]
        dv = c.norm("ln1", l, base + delta) - c.norm("ln1", l, base)  # [N, d]
        heads = range(c.n_heads) if comp.head == -1 else [comp.head]
        W_V, W_O = c.W_V(l), c.W_O(l)
        out = torch.zeros_like(dv)
        for h in heads:
            a = self.pos.pattern[l, h, out_row, t]  # type: ignore[index]
            if a != 0:
                out = out + a * ((dv @ W_V[h // c.group]) @ W_O[h])
        return out

    def propagate(self, chain: list[Comp], delta: torch.Tensor) -> torch.Tensor:
        """Scores ``y·clean - y·dirty`` for differences ``delta [N, d]`` entering ``chain[0]``."""
        for i, comp in enumerate(chain):
            out_row = chain[i + 1].token if i + 1 < len(chain) else self.last
            delta = self._through(comp, delta, out_row)
        return -(delta @ self.y)

    # -- candidates upstream of a chain ---------------------------------------------------------------
    def _head_deltas(self, layer: int, out_row: int) -> torch.Tensor:
        """``[H, T, d]``: each head's output difference at ``out_row`` when source ``s`` is patched."""
        key = ("attn", layer, out_row)
        if key in self._memo:
            return self._memo[key]
        c = self.c
        dv = c.norm("ln1", layer, self.neg.resid_pre[layer]) - c.norm("ln1", layer, self.pos.resid_pre[layer])  # [T, d]
        W_V, W_O = c.W_V(layer), c.W_O(layer)
        A = self.pos.pattern[layer, :, out_row, :]  # type: ignore[index]  # [H, T]
        out = torch.stack([(dv @ W_V[h // c.group]) @ W_O[h] for h in range(c.n_heads)])  # [H, T, d]
        self._memo[key] = out * A.unsqueeze(-1)
        return self._memo[key]

    def _mlp_delta(self, layer: int, row: int) -> torch.Tensor:
        key = ("mlp", layer, row)
        if key not in self._memo:
            c = self.c
            self._memo[key] = (c.mlp(layer, c.norm("ln2", layer, self.neg.resid_mid[layer, row]))
                               - c.mlp(layer, c.norm("ln2", layer, self.pos.resid_mid[layer, row])))
        return self._memo[key]

    def extend(self, chain: list[Comp], use_attn: bool = True, use_mlp: bool = True, keep: int | None = None) -> tuple[list[PatchedPath], PatchedPath]:
        """Every one-component extension of ``chain`` with its score (the ``keep`` best if given), and the embedding path."""
        c = self.c
        if chain:
            head = chain[0]
            row = head.token
            attn_layers = range(head.layer + (1 if head.sublayer == "mlp" else 0))
            mlp_layers = range(head.layer)
        else:
            row = self.last
            attn_layers = mlp_layers = range(c.n_layers)
        rest = chain
        found: list[PatchedPath] = []
        if use_attn:
            for layer in attn_layers:
                deltas = self._head_deltas(layer, row)  # the first component's output at `row`
                if rest:
                    scores = self.propagate(rest, deltas.reshape(-1, c.d)).reshape(c.n_heads, self.T)
                else:
                    scores = -(deltas @ self.y)
                scores = scores[:, : row + 1]  # causal: later sources do not reach `row`
                flat = scores.flatten()
                idx = torch.arange(flat.numel()) if keep is None else torch.topk(flat, min(keep, flat.numel())).indices
                width = scores.shape[1]
                for i in idx.tolist():
                    h, s = divmod(i, width)
                    found.append(PatchedPath([Comp(layer, "attn", h, s), *chain], float(flat[i])))
        if use_mlp:
            for layer in mlp_layers:
                d_out = self._mlp_delta(layer, row)
                score = self.propagate(rest, d_out.unsqueeze(0))[0] if rest else -(d_out @ self.y)
                found.append(PatchedPath([Comp(layer, "mlp", -1, row), *chain], float(score)))
        d_emb = (self.neg.resid_pre[0, row] - self.pos.resid_pre[0, row]).unsqueeze(0)
        emb_score = self.propagate(rest, d_emb)[0] if rest else -(d_emb[0] @ self.y)
        return found, PatchedPath([Comp(0, "embedding", -1, row), *chain], float(emb_score))

    def search(self, max_length: int, num_paths: int, use_attn: bool = True, use_mlp: bool = True) -> tuple[list[list[PatchedPath]], list[PatchedPath]]:
        """Greedy search (``patch_get_max_paths``): keep the ``num_paths`` best paths per length."""
        frontier: list[list[Comp]] = [[]]
        per_length: list[list[PatchedPath]] = []
        embeddings: list[PatchedPath] = []
        for _ in range(max_length):
            candidates: list[PatchedPath] = []
            for chain in frontier:
                if chain and chain[0].sublayer == "embedding":
                    continue
                found, emb = self.extend(chain, use_attn, use_mlp, keep=num_paths)
                candidates.extend(found)
                embeddings.append(emb)
            candidates.sort(key=lambda p: p.contrib, reverse=True)
            best = candidates[:num_paths]
            per_length.append(best)
            frontier = [p.comps for p in best]
            if not frontier:
                break
        embeddings.sort(key=lambda p: p.contrib, reverse=True)
        return per_length, embeddings[:num_paths]

    def head_scores(self) -> torch.Tensor:
        """``[L, H]``: patching each head's whole OV input (all source tokens), effect at the last token
        (``get_layer_head_patching_scores`` with ``only_patch_ov``)."""
        out = torch.zeros(self.c.n_layers, self.c.n_heads, dtype=self.c.dtype)
        for layer in range(self.c.n_layers):
            out[layer] = -(self._head_deltas(layer, self.last) @ self.y).sum(-1)
        return out
