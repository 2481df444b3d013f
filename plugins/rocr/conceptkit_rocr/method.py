"""The ``rocr`` method: fit a rank-one concept redirection, evaluate it across forms, store it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import conceptkit as ck
from conceptkit.api import validate_config
from conceptkit_rocr.config import RocrConfig

if TYPE_CHECKING:  # torch loads when the method runs, not when plugins are listed
    from conceptkit.api import Handle
    from conceptkit_rocr.edit import RocrEdit
    from conceptkit_rocr.result import RocrResult


class ROCR(ck.ArtifactMethod):
    name = "rocr"
    description = "Rank-one concept redirection: unlearn a concept by redirecting it to a harmless one (null-space-constrained MLP edit)."
    Config = RocrConfig
    requires = frozenset({ck.Capability.PYTHON_HOOKS})
    supports_ray = True  # the preserved-key statistics go through conceptkit.scale.dataset_moments

    def _stats(self, model: ck.Model, cfg: RocrConfig, layers: list[int], store: Any) -> dict:
        from conceptkit_rocr.corpus import preserved_texts
        from conceptkit_rocr.stats import layer_stats

        texts, fp = preserved_texts(cfg.stats_texts, cfg.stats_corpus, cfg.stats_chars)
        return layer_stats(model, layers, texts, fp, threshold=cfg.nullspace_threshold, relative=cfg.nullspace_relative, store=store, batch_size=cfg.batch_size, ray=cfg.ray)

    def _edit(self, model: ck.Model, cfg: RocrConfig, stats: dict, layers: list[int], C_prev: dict | None = None) -> "RocrEdit":
        from conceptkit_rocr.edit import compute_edit

        reject = dict(reject_target=cfg.reject_target, v_lr=cfg.v_lr, v_steps=cfg.v_steps, v_weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor, kl_factor=cfg.kl_factor, stop_loss=cfg.v_stop_loss)
        return compute_edit(
            model, cfg.target, cfg.harmless, layers, {l: s.projector.P for l, s in stats.items()},
            z_layer=cfg.z_layer, l2=cfg.l2, mode=cfg.mode, value_context=cfg.value_context, templates=cfg.templates, z_context=cfg.z_context,
            C_prev=C_prev, seed=cfg.seed, reject=reject, batch_size=cfg.batch_size,
        )

    def fit(self, model: ck.Model, config: Any = None, store: Any = None) -> "RocrEdit":
        """The edit (rank-one factors per layer); the model is left unchanged."""
        cfg = validate_config(self.Config, config, self.name)
        self.check(model)
        layers = cfg.resolved_layers(model.n_layers)
        return self._edit(model, cfg, self._stats(model, cfg, layers, store), layers)

    def apply(self, artifact: Any, model: ck.Model) -> "Handle":
        """Apply a :class:`RocrEdit`, its stored tensors (``store.tensors(record_id)``) or the
        core's ``WeightEditSet`` (``ck.edits.load(store, record_id)``)."""
        from conceptkit_rocr.edit import RocrEdit

        if isinstance(artifact, dict):
            artifact = RocrEdit.from_tensors(artifact)
        if isinstance(artifact, RocrEdit):
            return artifact.apply(model)
        return model.apply_edit(artifact)

    def compute(self, model: ck.Model, config: RocrConfig, store: Any) -> "RocrResult":
        from conceptkit_rocr.evaluate import entity, evaluate
        from conceptkit_rocr.result import LayerReport, RocrResult

        layers = config.resolved_layers(model.n_layers)
        stats = self._stats(model, config, layers, store)
        t0 = time.perf_counter()
        edit = self._edit(model, config, stats, layers)
        seconds = time.perf_counter() - t0
        result = RocrResult(
            target=config.target, harmless=config.harmless, layers=layers, z_layer=edit.z_layer, templates_kind=edit.templates_kind,
            value_context=config.value_context, mode=config.mode, texts_fingerprint=next(iter(stats.values())).texts_fingerprint,
            base_hashes=edit.base_hashes, residual_after=edit.info["residual_after"], edit_seconds=seconds,
            parents=[s.record_id for s in stats.values() if s.record_id],
        )
        for f in edit.factors:
            st = stats[f.layer]
            result.layer_reports.append(LayerReport(
                layer=f.layer, delta_norm=f.delta_norm, residual_norm=f.residual_norm, key_rank=st.projector.key_rank,
                null_dim=st.projector.null_dim, width=int(st.projector.P.shape[0]), n_tokens=st.n_tokens, tau=st.projector.tau,
                stats_source=st.source, stats_seconds=st.seconds,
            ))
        result.edit = edit
        if config.evaluate:
            try:
                entity(config.target)
            except ck.ConceptkitError:
                return result  # not one of the shipped entities: nothing to evaluate against
            ev = evaluate(model, config.target, lambda: edit.apply(model), method="rocr", batch_size=config.batch_size, eval_format=config.eval_format)
            result.evaluations.append(ev)
            if config.baseline:
                from conceptkit_rocr.baseline import gradient_ascent

                form = entity(config.target)["forms"]["fill_blank"]
                ga = gradient_ascent(model, [(form["prompt"], form["answer"])], lr=config.ga_lr, steps=config.ga_steps)
                result.baseline_info = {"method": "gradient_ascent", "lr": ga.lr, "steps": ga.steps, "training_form": "fill_blank", "nll_per_step": ga.nll_per_step}
                result.evaluations.append(evaluate(model, config.target, lambda: ga.apply(model), method="gradient_ascent", batch_size=config.batch_size, before=ev._before, eval_format=config.eval_format))
        return result
