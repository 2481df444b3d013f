"""The ``activation_reasoning`` method: build (or load) a dictionary, then run prompts with and
without reasoning, tracing detected -> fired -> steered per prompt."""

from __future__ import annotations

from typing import Any

import conceptkit as ck
from conceptkit.api import validate_config
from conceptkit_activation_reasoning.config import ARConfig


def default_site(model: Any) -> str:
    return f"blocks.{model.n_layers // 2}.hook_resid_post"


def resolve_sae(model: Any, spec: str | None, site: str, store: Any) -> Any:
    """``builtin`` -> ck.load_sae(model name, site); an existing folder -> SAE.load; else a store record."""
    if spec is None:
        return None
    from pathlib import Path

    if spec == "builtin":
        return ck.load_sae(model.name, site=site)
    if Path(spec).exists():
        return ck.SAE.load(spec)
    if store is None:
        raise ck.InputError(f"sae={spec!r} is neither 'builtin' nor a folder, and there is no store to read a record from")
    return ck.SAE.from_record(store, spec)


class ActivationReasoning(ck.Method):
    name = "activation_reasoning"
    description = "ActivationReasoning: concepts detected in activations (SAE latents or concept vectors), rules over them, steering from conclusions."
    Config = ARConfig
    requires = frozenset({ck.Capability.PYTHON_HOOKS})

    def reasoner(self, model: Any, config: Any = None, store: Any = None) -> Any:
        """The :class:`ActivationReasoner` for a config (builds the dictionary when needed)."""
        from conceptkit_activation_reasoning.build import build_dictionary
        from conceptkit_activation_reasoning.dictionary import ConceptDictionary
        from conceptkit_activation_reasoning.engine import ActivationReasoner, ARSettings

        cfg = validate_config(self.Config, config, self.name)
        site = cfg.site or default_site(model)
        sae = resolve_sae(model, cfg.sae, site, store)
        if cfg.vectors:
            from conceptkit_activation_reasoning import detection as det
            from conceptkit_activation_reasoning.build import labels_for, padded_activations
            from conceptkit_activation_reasoning.dictionary import stored_vector_dictionary, vector_sae

            if store is None:
                raise ck.InputError("vectors=<record ids> needs a store")
            d = stored_vector_dictionary(store, cfg.vectors, site=cfg.site)
            site, sae = d.site or site, None
            if cfg.examples:
                h, mask, ids = padded_activations(model, cfg.examples, site, cfg.batch_size)
                d.vector_bias = -(d.vectors @ h[mask].mean(0))  # type: ignore[operator]
                sae = vector_sae(d.vectors, site, d.vector_bias)  # type: ignore[arg-type]
                lab = labels_for(model, cfg.examples, ids, d.names, cfg.label, cfg.example_concepts, cfg.concept_token, h.shape[1])
                det.calibrate(d, sae.encode(h) * mask[..., None], lab, mask, top_output=cfg.top_output, k_c=cfg.k_c)
        elif cfg.dictionary:
            if store is None:
                raise ck.InputError("dictionary=<record id> needs a store")
            d = ConceptDictionary.from_record(store, cfg.dictionary)
            site = d.site or site
        else:
            if not cfg.examples or not cfg.concepts:
                raise ck.InputError("building a dictionary needs examples and concepts (or give dictionary=<record id>)")
            d, sae, _ = build_dictionary(
                model, site, cfg.examples, cfg.concepts, sae=sae, label=cfg.label, text_concepts=cfg.example_concepts, token=cfg.concept_token,
                kind=cfg.kind, k=cfg.search_top_k, order=cfg.order, mean_over=cfg.mean_over, search_top_k=cfg.search_top_k,
                depth=cfg.tree_depth, seed=cfg.seed, top_output=cfg.top_output, k_c=cfg.k_c, batch_size=cfg.batch_size,
            )
        settings = ARSettings(top_output=cfg.top_output, k_c=cfg.k_c, search_top_k=cfg.search_top_k, allow_multi=cfg.allow_multi,
                              threshold_for_rules=cfg.threshold_for_rules, scope=cfg.scope, rules_mode=cfg.rules_mode, alpha=cfg.alpha,
                              steer_top_k=cfg.steer_top_k, weighting=cfg.weighting, norm=cfg.norm, methodology=cfg.methodology,
                              use_dictionary_weights=cfg.use_dictionary_weights)
        return ActivationReasoner(model, d, cfg.rules, sae=sae, settings=settings, site=site)

    def compute(self, model: Any, config: ARConfig, store: Any) -> Any:
        from conceptkit_activation_reasoning.result import ARResult, PromptTrace

        ar = self.reasoner(model, config, store)
        d = ar.dictionary
        result = ARResult(site=ar.site, source=d.source, concepts=d.names, thresholds=[float(t) for t in d.thresholds],
                          train_balanced_accuracy=list(d.balanced_accuracy), rules=[str(r) for r in ar.rules])
        result.dictionary = d if not config.dictionary else None
        if config.answers is not None and len(config.answers) != len(config.prompts):
            raise ck.InputError(f"answers has {len(config.answers)} entries but there are {len(config.prompts)} prompts")
        bs = config.batch_size
        for start in range(0, len(config.prompts), bs):
            chunk = config.prompts[start : start + bs]
            with_ar = ar.generate(chunk, max_new_tokens=config.max_new_tokens)
            plain = model.generate(chunk, max_new_tokens=config.max_new_tokens, batch_size=bs)
            for i, p in enumerate(chunk):
                inf = with_ar.inferences[i]
                t = PromptTrace(prompt=p, detected=with_ar.detections[i].detected(), fired=inf.concluded,
                                proofs={h: [f"{'+'.join(f.support)} => {f.head}" for f in inf.proof(h)] for h in inf.concluded},
                                steered=with_ar.steered[i], delta_norms=[float(s.delta[i].norm()) for s in with_ar.steps],
                                plain=plain[i], with_ar=with_ar.texts[i])
                if config.answers is not None:
                    a = config.answers[start + i]
                    t.answer, t.correct_plain, t.correct_ar = a, a.lower() in plain[i].lower(), a.lower() in with_ar.texts[i].lower()
                result.traces.append(t)
        if config.answers is not None and result.traces:
            n = len(result.traces)
            result.accuracy_plain = sum(bool(t.correct_plain) for t in result.traces) / n
            result.accuracy_ar = sum(bool(t.correct_ar) for t in result.traces) / n
        return result
