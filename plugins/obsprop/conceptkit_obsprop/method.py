"""The ObsProp method: feature vectors pulled back from observables (Dunefsky & Cohan, arXiv 2312.16291).

No labelled data is needed: the observable (a functional on the logits) is pulled back through
the unembedding, the final norm and a path of heads (OV circuits) and MLPs (tangent at a
boundary point between a prompt pair). Heads are ranked without data by feature norm; paths can
also be found by greedy path patching from one prompt pair.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import conceptkit as ck
from conceptkit.api import InputError
from conceptkit_obsprop.config import Node, ObsPropConfig

if TYPE_CHECKING:  # torch loads when the method runs, not when plugins are listed
    from conceptkit_obsprop.result import ObsPropResult


class ObsProp(ck.Method):
    name = "obsprop"
    description = "Observable propagation: feature vectors from an output functional, head ranking, coupling coefficients."
    Config = ObsPropConfig
    requires = frozenset({ck.Capability.GRADIENTS})

    def compute(self, model: ck.Model, config: ObsPropConfig, store: Any) -> "ObsPropResult":
        from conceptkit_obsprop import features as ft
        from conceptkit_obsprop import pullback as pb
        from conceptkit_obsprop.circuit import Circuit
        from conceptkit_obsprop.observables import observable_vector
        from conceptkit_obsprop.patching import Patcher
        from conceptkit_obsprop.result import FeatureRow, ObsPropResult
        from conceptkit_obsprop.trace import trace

        circuit = Circuit(model)
        vocab = circuit.W_U.shape[1]
        labels = [o.label for o in config.observables]
        if len(set(labels)) != len(labels):
            raise InputError(f"observable names must be unique, got {labels}")
        ns = [observable_vector(o, model.tokenizer, vocab) for o in config.observables]

        needs_pair = config.ln_mode == "tangent" or config.path_search is not None or config.node_norm == "exact" or (
            config.mlp_mode == "tangent" and any(n.sublayer == "mlp" for p in config.paths for n in p)
        )
        if needs_pair and config.prompt_pair is None:
            raise InputError(
                "this configuration needs a prompt_pair [positive, negative] (ln_mode='tangent', node_norm='exact', "
                "path_search, or MLP nodes with mlp_mode='tangent')"
            )
        pos = neg = None
        if config.prompt_pair is not None:
            with_pattern = config.path_search is not None
            pos = trace(model, config.prompt_pair[0], with_pattern=with_pattern, dtype=circuit.dtype)
            neg = trace(model, config.prompt_pair[1], with_pattern=with_pattern, dtype=circuit.dtype)
        seed = pos if config.tangent_prompt == "positive" else neg

        processed = config.weights_processed or (getattr(model.ref, "processing", None) or "none") != "none"
        if processed and config.node_norm != "none":
            warnings.warn(
                f"model {model.name!r} has processed weights (gains folded into the next weights): node_norm="
                f"{config.node_norm!r} applies each norm's gain a second time",
                UserWarning,
                stacklevel=3,
            )
        result = ObsPropResult(observables=labels, n_layers=circuit.n_layers, n_heads=circuit.n_heads, prompt_pair=config.prompt_pair)
        result.conventions = {
            "ln_mode": config.ln_mode,
            "node_norm": config.node_norm,
            "mlp_mode": config.mlp_mode,
            "normalize": config.normalize,
            "norm_kind": circuit.norm_kind,
            "weights_processed": processed,
            "gqa_group": circuit.group,
            "score": "y · x at the earliest node's input residual (resid_pre for heads, resid_mid for MLPs)",
            "coupling": "C(y1, y2) = y1·y2 / |y1|^2",
        }

        # Data-free ranking of heads, without and with norm factors.
        traces = [t for t in (pos, neg) if t is not None]
        for label, n in zip(labels, ns):
            plain = ft.head_feature_norms(circuit, n)
            with_ln = ft.head_feature_norms(circuit, n, with_norms=True, traces=traces or None)
            result.head_norms[label] = plain.tolist()
            result.head_norms_ln[label] = with_ln.tolist()
            ranks_ln = {(l, h): i + 1 for i, (l, h, _) in enumerate(ft.rank_heads(with_ln, with_ln.numel()))}
            result.top_heads[label] = [
                {"layer": l, "head": h, "norm": v, "norm_ln": float(with_ln[l, h]), "rank_ln": ranks_ln[(l, h)]}
                for l, h, v in ft.rank_heads(plain, config.top_k)
            ]

        # Final-norm features, then one feature per (observable, path).
        y_finals = [ft.final_feature(circuit, n, config.ln_mode, seed) for n in ns]
        paths = [list(p) for p in config.paths]
        if not paths:
            first = result.top_heads[labels[0]]
            paths = [[Node(layer=r["layer"], sublayer="attn", head=r["head"], token=-1)] for r in first[: min(3, config.top_k)]]
        per_path: dict[str, list[Any]] = {}
        for path in paths:
            for label, y_f in zip(labels, y_finals):
                feat = ft.path_feature(circuit, y_f, path, observable=label, node_norm=config.node_norm, mlp_mode=config.mlp_mode,
                                       normalize=config.normalize, pos=pos, neg=neg)
                result.features.append(FeatureRow(observable=label, path=feat.label, nodes=[n.model_dump() for n in path],
                                                  site=feat.site, token=feat.token, norm=feat.norm, boundary_t=feat.boundary_t))
                result.vectors[f"{label}|{feat.label}"] = feat.y.float().tolist()
                per_path.setdefault(feat.label, []).append(feat.y)
        if len(ns) > 1:
            raw = [pb.unembed_pullback(circuit.W_U, n) for n in ns]
            result.raw_cosine = ft.coupling_matrices(raw)[1].tolist()
            for label, ys in per_path.items():
                C, cos = ft.coupling_matrices(ys)
                result.coupling[label] = {"observables": labels, "coupling": C.tolist(), "cosine": cos.tolist()}

        if config.path_search is not None:
            assert pos is not None and neg is not None
            for label, y_f in zip(labels, y_finals):
                patcher = Patcher(circuit, pos, neg, y_f)
                s = config.path_search
                per_length, emb = patcher.search(s.max_length, s.num_paths, s.use_attn, s.use_mlp)
                result.patching[label] = {
                    "paths": [[{"label": p.label, "contrib": p.contrib, "nodes": [n.model_dump() for n in p.nodes(pos.n_tokens)]}
                               for p in level] for level in per_length],
                    "embedding": [{"label": p.label, "contrib": p.contrib} for p in emb],
                    "head_scores": patcher.head_scores().tolist(),
                }
        return result
