"""Concept dictionaries: which latents (or stored concept vectors) represent each concept.

A dictionary maps ``C`` concept names to SAE latents. Two kinds:

* ``top_k`` (the paper's R_single/R_multi): for each concept the ``k`` latents with the largest
  mean difference ``Delta_c = E[l | y_c = 1] - E[l | y_c = 0]``, ordered by ``order``
  (``unique_first``: a stable sort by how many concepts share the latent, shared ones last;
  ``unique_only``: shared latents dropped (index ``-1``); ``original_order``: by ``Delta``).
* ``tree`` (R_relation): one seeded decision tree per concept over the latents; its arrays are
  kept as tensors so a dictionary is a plain store record and prediction needs no sklearn.

Models without an SAE use stored concept vectors ``U [C, d]`` (CAVs, mean differences): the
"SAE" is then ``encode(h) = ReLU(h U^T)``, ``W_dec = U`` (:func:`vector_sae`), and the dictionary
is ``top_k`` with concept ``c`` on latent ``c``. ``source`` records which (provenance).

``mean_over`` chooses the expectation: ``tokens`` (the paper; default) or ``samples`` (the
reference code: per-sample means, a sample without the concept contributing a zero row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conceptkit.api import InputError

Order = Literal["unique_first", "unique_only", "original_order"]


@dataclass
class ConceptDictionary:
    """``names [C]``; ``indices``/``weights`` ``[C, k]`` (``-1`` = no latent); ``thresholds [C]``."""

    names: list[str]
    indices: torch.Tensor
    weights: torch.Tensor
    thresholds: torch.Tensor
    kind: Literal["top_k", "tree"] = "top_k"
    source: Literal["sae", "vectors"] = "sae"
    site: str | None = None
    sae_ref: str | None = None
    trees: dict[str, torch.Tensor] = field(default_factory=dict)  # left/right/feature/threshold/prob [C, N]
    vectors: torch.Tensor | None = None  # [C, d] for source == "vectors"
    vector_bias: torch.Tensor | None = None  # [C] encoder bias of a vector dictionary (-U mu: centred scores)
    balanced_accuracy: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        C = len(self.names)
        if len(set(self.names)) != C:
            raise InputError(f"concept names must be unique, got {self.names}")
        if self.indices.shape[0] != C or self.thresholds.shape != (C,):
            raise InputError(f"dictionary of {C} concepts has indices {tuple(self.indices.shape)} and thresholds {tuple(self.thresholds.shape)}")

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"concept {name!r} is not in the dictionary; known: {self.names}") from None

    # -- store records ------------------------------------------------------------------------
    def to_draft(self, concept: str = "ar-dictionary", description: str = "") -> Any:
        from conceptkit.api import RecordDraft

        tensors = {"indices": self.indices.long(), "weights": self.weights.float(), "thresholds": self.thresholds.float()}
        tensors.update({f"tree_{k}": v for k, v in self.trees.items()})
        if self.vectors is not None:
            tensors["vectors"] = self.vectors.float()
        if self.vector_bias is not None:
            tensors["vector_bias"] = self.vector_bias.float()
        meta = {"names": self.names, "kind": self.kind, "source": self.source, "sae": self.sae_ref,
                "balanced_accuracy": self.balanced_accuracy, "note": description}
        return RecordDraft(tensors=tensors, concept=concept, kind="concept_dictionary", site=self.site,
                           description=json.dumps(meta), tags=["activation_reasoning", self.kind, self.source])

    @classmethod
    def from_record(cls, store: Any, record_id: str) -> "ConceptDictionary":
        rec = store.get(record_id)
        if rec.kind != "concept_dictionary":
            raise InputError(f"record {record_id!r} is a {rec.kind!r}, not a concept_dictionary")
        t = store.tensors(record_id)
        meta = json.loads(rec.description)
        return cls(names=meta["names"], indices=t["indices"], weights=t["weights"], thresholds=t["thresholds"],
                   kind=meta["kind"], source=meta["source"], site=rec.site, sae_ref=meta.get("sae"),
                   trees={k[5:]: v for k, v in t.items() if k.startswith("tree_")}, vectors=t.get("vectors"), vector_bias=t.get("vector_bias"),
                   balanced_accuracy=meta.get("balanced_accuracy", []))


# -- latents and labels ---------------------------------------------------------------------------
def keep_top(latents: torch.Tensor, k: int | None) -> torch.Tensor:
    """Zero all but each token's ``k`` largest latents (ties at the k-th value are all kept)."""
    if k is None or k >= latents.shape[-1]:
        return latents
    kth = torch.topk(latents, k, dim=-1).values[..., -1:]
    return torch.where(latents >= kth, latents, torch.zeros_like(latents))


def mean_difference(latents: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                    mean_over: Literal["tokens", "samples"] = "tokens") -> torch.Tensor:
    """``Delta [C, d_sae]`` from ``latents [n, T, d]``, token labels ``[n, T, C]`` and ``mask [n, T]``."""
    if latents.dim() != 3 or labels.dim() != 3 or labels.shape[:2] != latents.shape[:2]:
        raise InputError(f"latents [n, T, d] and labels [n, T, C] must agree on n and T, got {tuple(latents.shape)} and {tuple(labels.shape)}")
    n, T, _ = latents.shape
    m = torch.ones(n, T, dtype=torch.bool) if mask is None else mask.bool()
    l = latents.double()
    y = labels.bool() & m[..., None]
    ybar = ~labels.bool() & m[..., None]
    if mean_over == "tokens":
        pos = torch.einsum("ntc,ntd->cd", y.double(), l) / y.sum((0, 1)).clamp_min(1)[:, None]
        neg = torch.einsum("ntc,ntd->cd", ybar.double(), l) / ybar.sum((0, 1)).clamp_min(1)[:, None]
    elif mean_over == "samples":
        pos_i = torch.einsum("ntc,ntd->ncd", y.double(), l) / y.sum(1).clamp_min(1)[..., None]
        neg_i = torch.einsum("ntc,ntd->ncd", ybar.double(), l) / ybar.sum(1).clamp_min(1)[..., None]
        pos, neg = pos_i.mean(0), neg_i.mean(0)
    else:
        raise InputError(f"mean_over must be 'tokens' or 'samples', got {mean_over!r}")
    return (pos - neg).float()


def select_features(delta: torch.Tensor, k: int, order: Order = "unique_first") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` latents per concept by ``delta [C, d]`` and their ``delta`` values, then ``order``.

    Returns ``indices [C, k]`` (long; ``-1`` where ``unique_only`` dropped a shared latent) and
    ``weights [C, k]`` (0 there). Equal ``delta`` values keep the lower latent index first.
    """
    C, d = delta.shape
    if not 1 <= k <= d:
        raise InputError(f"k must be in [1, {d}] (the number of latents), got {k}")
    vals, idx = torch.sort(delta, dim=1, descending=True, stable=True)
    vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
    if order == "original_order":
        return idx, vals
    shared = torch.zeros(d, dtype=torch.long)
    for c in range(C):
        shared[idx[c]] += 1
    counts = shared[idx]  # [C, k]
    if order == "unique_first":
        perm = torch.sort(counts, dim=1, stable=True).indices
        return torch.gather(idx, 1, perm), torch.gather(vals, 1, perm)
    if order == "unique_only":
        drop = counts > 1
        return idx.masked_fill(drop, -1), vals.masked_fill(drop, 0.0)
    raise InputError(f"order must be unique_first, unique_only or original_order, got {order!r}")


# -- trees ------------------------------------------------------------------------------------------
def fit_trees(latents: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *, depth: int | None = 5,
              seed: int = 0, balance: bool = True) -> dict[str, torch.Tensor]:
    """One ``DecisionTreeClassifier(gini, max_depth, class_weight="balanced", random_state=seed)``
    per concept on per-sample mean rows (positive tokens vs the rest, all-zero rows dropped),
    classes subsampled to the smaller size with a seeded permutation when ``balance``.
    Returns padded arrays ``left, right, feature [C, N]`` (long), ``threshold, prob [C, N]``."""
    from sklearn.tree import DecisionTreeClassifier

    n, T, d = latents.shape
    C = labels.shape[-1]
    m = torch.ones(n, T, dtype=torch.bool) if mask is None else mask.bool()
    gen = torch.Generator().manual_seed(seed)
    arrays = []
    for c in range(C):
        y = labels[..., c].bool() & m
        yn = ~labels[..., c].bool() & m
        pos = (latents * y[..., None]).sum(1) / y.sum(1).clamp_min(1)[:, None]
        neg = (latents * yn[..., None]).sum(1) / yn.sum(1).clamp_min(1)[:, None]
        pos, neg = pos[pos.abs().sum(1) > 0], neg[neg.abs().sum(1) > 0]
        if len(pos) == 0 or len(neg) == 0:
            raise InputError(f"concept {c}: the tree dictionary needs positive and negative examples (got {len(pos)} and {len(neg)} rows)")
        if balance:
            size = min(len(pos), len(neg))
            pos = pos[torch.randperm(len(pos), generator=gen)[:size]]
            neg = neg[torch.randperm(len(neg), generator=gen)[:size]]
        X = torch.cat([pos, neg]).double().numpy()
        Y = [1] * len(pos) + [0] * len(neg)
        tree = DecisionTreeClassifier(criterion="gini", max_depth=depth, class_weight="balanced", random_state=seed).fit(X, Y).tree_
        value = torch.as_tensor(tree.value[:, 0, :], dtype=torch.float64)
        prob = value[:, 1] / value.sum(1).clamp_min(1e-12)
        arrays.append(dict(left=torch.as_tensor(tree.children_left), right=torch.as_tensor(tree.children_right),
                           feature=torch.as_tensor(tree.feature), threshold=torch.as_tensor(tree.threshold), prob=prob))
    N = max(len(a["left"]) for a in arrays)
    out = {}
    for key, fill in (("left", -1), ("right", -1), ("feature", 0), ("threshold", 0.0), ("prob", 0.0)):
        rows = [torch.cat([a[key], torch.full((N - len(a[key]),), fill, dtype=a[key].dtype)]) for a in arrays]
        out[key] = torch.stack(rows).long() if key in ("left", "right", "feature") else torch.stack(rows).double()
    return out


def tree_probability(trees: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``P_tree(c | x)`` for ``x [N, d]`` and every concept: ``[N, C]`` (sklearn's ``<=`` goes left)."""
    C = trees["left"].shape[0]
    out = torch.empty(x.shape[0], C)
    for c in range(C):
        node = torch.zeros(x.shape[0], dtype=torch.long)
        left, right, feat, thr = trees["left"][c], trees["right"][c], trees["feature"][c], trees["threshold"][c]
        while True:
            inner = left[node] >= 0
            if not bool(inner.any()):
                break
            go_left = x.gather(1, feat[node].clamp_min(0)[:, None])[:, 0].double() <= thr[node].double()
            node = torch.where(inner, torch.where(go_left, left[node], right[node]), node)
        out[:, c] = trees["prob"][c][node].float()
    return out


# -- vector dictionaries ----------------------------------------------------------------------------
def vector_sae(vectors: torch.Tensor, site: str | None = None, bias: torch.Tensor | None = None) -> Any:
    """The SAE of a concept-vector dictionary: ``encode(h) = ReLU(h U^T + b)``, ``W_dec = U``."""
    from conceptkit.api import SAE

    U = vectors.float()
    C, d = U.shape
    b = torch.zeros(C) if bias is None else bias.float()
    return SAE(W_enc=U.T.contiguous(), b_enc=b, W_dec=U.clone(), b_dec=torch.zeros(d), architecture="standard", site=site,
               metadata={"source": "concept vectors"})


def vector_dictionary(names: list[str], vectors: torch.Tensor, site: str | None = None, normalise: bool = True,
                      parents: list[str] | None = None, center: torch.Tensor | None = None) -> ConceptDictionary:
    """A ``top_k`` dictionary with concept ``c`` on latent ``c`` of :func:`vector_sae` (``k = 1``).

    ``center`` (a mean activation ``mu [d]``) makes the scores ``ReLU(U (h - mu))``: without it a
    component shared by all activations (large on real models) decides which concept is largest."""
    U = vectors.float()
    if U.dim() != 2 or U.shape[0] != len(names):
        raise InputError(f"vectors must be [C, d] with C = {len(names)} names, got {tuple(U.shape)}")
    if normalise:
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)
    C = len(names)
    return ConceptDictionary(names=list(names), indices=torch.arange(C)[:, None], weights=torch.ones(C, 1), thresholds=torch.zeros(C),
                             kind="top_k", source="vectors", site=site, sae_ref=",".join(parents or []) or None, vectors=U,
                             vector_bias=None if center is None else -(U @ center.float()))


def stored_vector_dictionary(store: Any, records: dict[str, str], site: str | None = None, tensor: str | None = None) -> ConceptDictionary:
    """A vector dictionary from concept vectors in the store (CAVs, mean differences): ``records``
    maps each concept name to a record id; ``tensor`` names the tensor (default: the record's only
    one, or ``"vector"``). The records' site is used when ``site`` is not given (all must agree)."""
    vecs, sites = [], set()
    for name, rid in records.items():
        rec = store.get(rid)
        t = store.tensors(rid)
        key = tensor or ("vector" if "vector" in t else (next(iter(t)) if len(t) == 1 else None))
        if key is None or key not in t:
            raise InputError(f"record {rid!r} ({name}) has tensors {sorted(t)}; say which one with tensor=")
        v = t[key].float().reshape(-1)
        vecs.append(v)
        if rec.site:
            sites.add(rec.site)
    if site is None:
        if len(sites) > 1:
            raise InputError(f"the concept vectors come from different sites {sorted(sites)}; pass site=")
        site = next(iter(sites), None)
    widths = {v.numel() for v in vecs}
    if len(widths) != 1:
        raise InputError(f"the concept vectors have different widths {sorted(widths)}")
    return vector_dictionary(list(records), torch.stack(vecs), site=site, parents=list(records.values()))
