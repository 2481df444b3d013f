"""The BiasLens method: per-layer CAVs for targets and references, optionally in an SAE basis,
the asymmetry of the target's alignment with the references, and validation against behaviour.

All texts (every concept's probe sentences and the negatives) are captured once, at every
analysed layer in one pass; probes, representations and scores are then cheap.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from typing import TYPE_CHECKING, Any

import conceptkit as ck
from conceptkit.api import InputError
from conceptkit_biaslens.config import BehaviourSpec, BiasLensConfig, ConceptRef, ConceptSpec

if TYPE_CHECKING:
    from conceptkit_biaslens.result import BiasLensResult


def load_study(name: str) -> dict[str, Any]:
    """A shipped study (``occupations`` or ``aspects``): targets with examples and prompts,
    the two references and the behavioural word lists (``scripts/make_data.py`` writes them)."""
    text = resources.files("conceptkit_biaslens").joinpath(f"data/{name}.json").read_text()
    return json.loads(text)


def _resolve(config: BiasLensConfig) -> tuple[list[ConceptSpec], list[ConceptSpec], BehaviourSpec | None]:
    """Targets, references and behaviour from the config (a study fills what is not given)."""
    from conceptkit.api import concepts

    targets, references, behaviour = list(config.targets), list(config.references), config.behaviour
    if config.study is not None:
        study = load_study(config.study)
        if not targets:
            targets = [ConceptSpec(name=n, examples=t["examples"], prompts=t["prompts"]) for n, t in study["targets"].items()]
        if not references:
            references = list(study["references"])
        if behaviour is None:
            behaviour = BehaviourSpec(**study["behaviour"])

    def spec(ref: ConceptRef) -> ConceptSpec:
        if isinstance(ref, ConceptSpec):
            if not ref.examples and not ref.from_store:
                raise InputError(f"concept {ref.name!r} has no examples (give examples, or from_store: true)")
            return ref
        loaded = concepts.load(ref)
        return ConceptSpec(name=loaded.name, examples=list(loaded.examples))

    t_specs, r_specs = [spec(t) for t in targets], [spec(r) for r in references]
    if not t_specs:
        raise InputError("BiasLens needs at least one target concept (targets: [...] or study: occupations|aspects)")
    if len(r_specs) < 2:
        raise InputError(f"BiasLens needs two or more reference concepts, got {len(r_specs)}")
    if config.score == "diff" and len(r_specs) != 2:
        raise InputError(f"score 'diff' compares exactly two references, got {len(r_specs)}; use score: std")
    names = [c.name for c in t_specs + r_specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"concept names must be unique across targets and references; repeated: {dupes}")
    return t_specs, r_specs, behaviour


def _negatives(config: BiasLensConfig, n_concepts: int) -> list[list[str]]:
    """Negative sentences per concept: one shared sample, or disjoint slices of the pool."""
    import random

    from conceptkit.api import concepts

    pool = concepts.from_examples("negative pool", config.negative_pool) if isinstance(config.negative_pool, list) else concepts.load(config.negative_pool)
    texts = list(pool.examples)
    random.Random(config.seed).shuffle(texts)
    if config.negatives == "shared":
        n = min(config.n_neg, len(texts))
        if n < config.n_neg:
            warnings.warn(f"negative pool {pool.name!r} has {len(texts)} sentences; using all (n_neg={config.n_neg})", stacklevel=3)
        return [texts[:n]] * n_concepts
    per = min(config.n_neg, len(texts) // n_concepts)
    if per < 4:
        raise InputError(
            f"negative pool {pool.name!r} has {len(texts)} sentences: too few for disjoint negatives for {n_concepts} concepts "
            "(need at least 4 each); use negatives: shared"
        )
    if per < config.n_neg:
        warnings.warn(f"disjoint negatives: {per} per concept (pool of {len(texts)} for {n_concepts} concepts; n_neg={config.n_neg})", stacklevel=3)
    return [texts[i * per : (i + 1) * per] for i in range(n_concepts)]


def _load_sae(ref: str, store: Any) -> Any:
    from pathlib import Path

    from conceptkit.api import sae as sae_module

    if Path(ref).exists():
        return sae_module.SAE.load(ref)
    if store is None:
        raise InputError(f"SAE {ref!r} is not a folder and no store was given to look it up as a record")
    return sae_module.SAE.from_record(store, ref)


class BiasLens(ck.Method):
    name = "biaslens"
    description = "Bias as asymmetric alignment of a target concept with reference concepts (CAVs, optionally SAE basis)."
    Config = BiasLensConfig

    def compute(self, model: ck.Model, config: BiasLensConfig, store: Any) -> "BiasLensResult":
        import torch

        from conceptkit.api import fingerprint, fit_probe
        from conceptkit_biaslens import behaviour as beh
        from conceptkit_biaslens import scores
        from conceptkit_biaslens.result import BiasLensResult, LayerRow, TargetRow
        from conceptkit_biaslens.sae_options import represent

        targets, references, behaviour = _resolve(config)
        layers = list(range(model.n_layers)) if config.layers is None else list(config.layers)
        bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
        if bad:
            raise InputError(f"layers {bad} out of range: the model has {model.n_layers} blocks (0..{model.n_layers - 1})")
        sites = [f"blocks.{layer}.hook_resid_post" for layer in layers]
        for s in sites:
            model.resolve_site(s)
        if config.sae_option != "none":
            missing = [layer for layer in layers if layer not in config.saes]
            if missing:
                raise InputError(f"sae_option {config.sae_option!r} needs an SAE for every analysed layer; none given for layers {missing}")
        behaviour_ids = None
        if behaviour is not None:
            behaviour_ids = (beh.token_ids(model, behaviour.positive_tokens), beh.token_ids(model, behaviour.negative_tokens))
            no_prompts = [t.name for t in targets if not t.prompts]
            if no_prompts:
                raise InputError(f"behaviour is measured on each target's prompts; targets without prompts: {no_prompts}")
        saes = {layer: _load_sae(ref, store) for layer, ref in config.saes.items() if layer in layers} if config.sae_option != "none" else {}

        concepts_all = targets + references
        fitted = [c for c in concepts_all if not c.from_store]
        negatives = _negatives(config, len(fitted))
        positives = {}
        for c in fitted:
            if len(c.examples) < config.n_pos:
                warnings.warn(f"concept {c.name!r} has {len(c.examples)} probe sentences (n_pos={config.n_pos}); using all", stacklevel=2)
            positives[c.name] = c.examples[: config.n_pos]

        # One capture of every distinct text at every analysed site.
        texts = list(dict.fromkeys([t for c in fitted for t in positives[c.name]] + [t for neg in negatives for t in neg]))
        row = {t: i for i, t in enumerate(texts)}
        acts = model.capture(texts, sites, reduce="last", batch_size=config.batch_size) if texts else None

        L = len(layers)
        names = [c.name for c in concepts_all]
        cavs = torch.zeros(len(concepts_all), L, model.d_model, dtype=torch.float64)
        accuracy = torch.full((len(concepts_all), L), float("nan"), dtype=torch.float64)
        pos_means: dict[tuple[int, int], torch.Tensor] = {}
        neg_means: dict[tuple[int, int], torch.Tensor] = {}
        scale = {}
        fit_index = {c.name: i for i, c in enumerate(fitted)}
        for ci, c in enumerate(concepts_all):
            for li, site in enumerate(sites):
                if c.from_store:
                    vec, acc = self._stored_vector(store, c.name, site, model)
                    cavs[ci, li], accuracy[ci, li] = vec, acc
                    continue
                a = acts[site]
                pos = a[[row[t] for t in positives[c.name]]]
                neg = a[[row[t] for t in negatives[fit_index[c.name]]]]
                probe = fit_probe(pos, neg, "logistic", C=config.probe_C, test_size=config.test_size, balance="class_weight", seed=config.seed, standardize=config.standardize)
                cavs[ci, li] = probe.direction.double()
                accuracy[ci, li] = probe.accuracy
                pos_means[ci, li], neg_means[ci, li] = pos.mean(0), neg.mean(0)
        if config.sae_option == "c" and acts is not None:  # option c scales the CAV to typical activation norms
            scale = {li: float(acts[site].norm(dim=-1).mean()) for li, site in enumerate(sites)}

        if config.remove_mean_cav:
            cavs = torch.stack([scores.remove_mean(cavs[:, li]) for li in range(L)], dim=1)

        def z(ci: int, li: int) -> torch.Tensor:
            return represent(
                config.sae_option, cavs[ci, li], saes.get(layers[li]), k=config.sae_topk,
                pos_mean=pos_means.get((ci, li)), neg_mean=neg_means.get((ci, li)), scale=scale.get(li),
            )

        n_t = len(targets)
        ref_idx = list(range(n_t, len(concepts_all)))
        target_rows = []
        for ti, t in enumerate(targets):
            per_layer = []
            for li, layer in enumerate(layers):
                align = scores.alignment(z(ti, li), [z(ri, li) for ri in ref_idx])
                b = float(scores.bias_from_alignment(align, config.score))
                involved = [ti, *ref_idx]
                min_acc = float(accuracy[involved, li].min())
                per_layer.append(LayerRow(layer=layer, bias=b, alignment=[float(v) for v in align], min_probe_accuracy=min_acc, kept=min_acc >= config.min_probe_accuracy))
            keep = torch.tensor([r.kept for r in per_layer])
            agg = scores.aggregate(torch.tensor([r.bias for r in per_layer]), keep)
            behaviour_value = None
            if behaviour_ids is not None:
                behaviour_value = beh.behavioural_bias(model, t.prompts, *behaviour_ids, batch_size=config.batch_size)
            target_rows.append(TargetRow(concept=t.name, bias=agg, layers=per_layer, behaviour=behaviour_value,
                                         examples_fingerprint=fingerprint(positives[t.name]) if t.name in positives else None))

        validation = None
        paired = [(r.bias, r.behaviour) for r in target_rows if r.bias is not None and r.behaviour is not None]
        if behaviour is not None and len(paired) >= 3:
            validation = beh.validate([p[0] for p in paired], [p[1] for p in paired], n_boot=config.bootstrap, seed=config.seed)

        return BiasLensResult(
            targets=target_rows,
            references=[r.name for r in references],
            layers=layers,
            probe_accuracy={n: [float(v) for v in accuracy[i]] for i, n in enumerate(names)},
            validation=validation,
            settings={
                "probe": "logistic", "probe_C": config.probe_C, "standardize": config.standardize, "class_weight": "balanced", "test_size": config.test_size,
                "reduction": "last", "sites": "blocks.{l}.hook_resid_post", "sae_option": config.sae_option,
                "sae_topk": config.sae_topk if config.sae_option != "none" else None, "score": config.score,
                "aggregation": "mean over kept layers", "min_probe_accuracy": config.min_probe_accuracy,
                "negatives": config.negatives, "negative_pool": config.negative_pool if isinstance(config.negative_pool, str) else "inline",
                "negative_fingerprints": sorted({fingerprint(n) for n in negatives}), "remove_mean_cav": config.remove_mean_cav,
                "behaviour": behaviour.model_dump() if behaviour is not None else None, "study": config.study,
            },
            cav_tensors={n: cavs[i].float() for i, n in enumerate(names) if not concepts_all[i].from_store},
            sites=sites,
        )

    @staticmethod
    def _stored_vector(store: Any, concept: str, site: str, model: ck.Model) -> tuple[Any, float]:
        """The newest stored vector of ``concept`` at ``site`` for this model's weights."""
        import torch

        if store is None:
            raise InputError(f"concept {concept!r} is to be read from the store, but no store was given")
        weights = model.ref.weights_hash
        records = [r for r in store.find(concept=concept, site=site) if (r.model or {}).get("weights_hash") in (None, weights)]
        if not records:
            raise InputError(f"no stored vector of concept {concept!r} at {site!r} for this model (weights {weights})")
        record = max(records, key=lambda r: r.created_at)
        tensors = store.tensors(record.id)
        vec = next((tensors[k] for k in ("cav", "vector") if k in tensors), None)
        if vec is None:
            vec = next(t for t in tensors.values() if t.dim() == 1)
        acc = record.metrics.get("cav_accuracy", record.metrics.get("probe_accuracy", float("nan")))
        return vec.double() / vec.double().norm().clamp_min(1e-12), float(acc) if acc is not None else float("nan")
