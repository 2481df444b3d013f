"""The TCAV method: CAVs by linear probes, sensitivities once per site, random runs, tests.

Gradients of the objective at each site are computed once for all target inputs and reused for
every CAV (``S = G @ v``): that is what makes TCAV cheap, where captum recomputes activations
and gradients per experimental set. Activations and gradients go through a disk cache
(:mod:`conceptkit_tcav.cache`), so re-running with another test, probe or random draw does
not touch the model. CAVs are fitted in batches (``conceptkit.probes.fit_probes``), which is
what makes the calibrated Monte Carlo test (:mod:`conceptkit_tcav.experiment`) affordable.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import conceptkit as ck
from conceptkit.api import InputError
from conceptkit_tcav.config import DEFAULT_DEPTH, ConceptSpec, TCAVConfig

if TYPE_CHECKING:  # the heavy modules (torch, sklearn) load when the method runs, not when listed
    from conceptkit.api import concepts as library
    from conceptkit_tcav.result import TCAVResult

ANTICONSERVATIVE = "anticonservative: treats runs that share the concept's examples as independent"
TEST_NOTES = {
    "monte_carlo": "calibrated Monte Carlo test: the experiment replayed with pseudo-concepts",
    "two_sample_random": f"TF's run-level two-sample t-test vs random-random runs; {ANTICONSERVATIVE}",
    "one_sample_0.5": f"the paper's one-sample t-test vs 0.5; {ANTICONSERVATIVE}",
}


#: the quality gate: an experiment with more than this fraction of its CAVs below min_cav_accuracy is not tested
GATE = 0.25


def _null_side(rep: "Any") -> dict[str, Any]:
    """What the replays looked like, for the report (the same accuracy rule as the concept)."""
    import numpy as np

    return {"n_dropped": rep.n_dropped, "n_cavs": rep.n_cavs, "n_replays": len(rep.stats), "n_gated": rep.n_gated,
            "mean": float(np.mean(rep.mean_scores)), "std": float(np.std(rep.mean_scores)),
            "statistic_mean": float(np.mean([s[0] for s in rep.stats])), "statistic_std": float(np.std([s[0] for s in rep.stats]))}


STATISTIC_NOTES = {
    "cosine": "cosine: mean over runs and targets of cos(gradient, CAV) (the directional derivative normalised; does not "
    "saturate); the reported score is the TCAV sign score",
    "score": "score: mean TCAV sign score, ties broken by the mean directional derivative (saturates when the targets' "
    "gradients point alike)",
}


class PositionMismatchWarning(UserWarning):
    """CAVs and gradients are read at different kinds of token position."""


def default_site(model: ck.Model) -> str:
    """The residual stream after the layer at 60% of the model's depth (layer 18 of 30 on SmolLM2)."""
    layer = min(model.n_layers - 1, max(0, round(DEFAULT_DEPTH * model.n_layers)))
    return f"blocks.{layer}.hook_resid_post"


def _concept(spec: str | ConceptSpec) -> "library.ConceptSet":
    from conceptkit.api import concepts as library

    if isinstance(spec, ConceptSpec):
        return library.from_examples(spec.name, spec.examples)
    return library.load(spec)


def _pool(spec: str | list[str]) -> "library.ConceptSet":
    from conceptkit.api import concepts as library

    if isinstance(spec, list):
        if not spec:
            raise InputError("the random pool is empty")
        return library.from_examples("random pool", spec)
    return library.load(spec)


def _objective(config: TCAVConfig, model: ck.Model) -> Any:
    """The scalar whose gradient TCAV uses; validated here, before any compute."""
    from conceptkit.api import TokenLogit, as_objective

    if config.gradient_of == "target":
        return as_objective(dict(config.objective), model)
    # TF convention: the cross-entropy of the objective's (positive) token; S < 0 is counted.
    token = config.objective.get("positive", config.objective.get("token"))
    if token is None:
        raise InputError("gradient_of='loss' needs an objective naming a token ('token' or 'positive')")
    log_prob = as_objective(TokenLogit(token=token, log_prob=True), model)
    return lambda out, batch: -log_prob(out, batch)


def _template(template: str, field: str) -> str:
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as err:
        raise InputError(f"{field} {template!r} must contain one '{{}}' where the text goes ({err})") from None
    if "{}" not in template:
        raise InputError(f"{field} {template!r} has no '{{}}' where the text goes")
    return template


def position_note(concept_template: str, target_template: str, reduction: str) -> str:
    """Why CAVs and gradients may be read at different kinds of position ('' when they are not)."""
    if reduction != "last":
        return ""
    after_c, after_t = concept_template.split("{}", 1)[1], target_template.split("{}", 1)[1]
    if after_c == after_t:
        return ""
    return (
        f"CAVs are read at the last token of concept examples formatted as {concept_template!r} but gradients at the "
        f"last token of targets formatted as {target_template!r}: different kinds of position (set concept_template)"
    )


class TCAV(ck.Method):
    name = "tcav"
    description = "Testing with concept activation vectors (Kim et al. 2018), with a calibrated significance test."
    Config = TCAVConfig
    requires = frozenset({ck.Capability.GRADIENTS})

    def compute(self, model: ck.Model, config: TCAVConfig, store: Any) -> "TCAVResult":
        import numpy as np
        import torch

        from conceptkit_tcav import experiment as ex
        from conceptkit_tcav.cache import FeatureCache
        from conceptkit_tcav.result import TCAVResult
        from conceptkit_tcav.scores import TestOutcome, batch_scores, t_test

        concept_sets = [_concept(c) for c in config.concepts]
        names = [c.name for c in concept_sets]
        if len(set(names)) != len(names):
            raise InputError(f"concept names must be unique, got {names}")
        for c in concept_sets:
            if len(c) < 4:
                raise InputError(f"too few examples for a held-out split: concept {c.name!r} has {len(c)} (need at least 4)")
        if config.relative and len(concept_sets) < 2:
            raise InputError("relative TCAV needs at least two concepts")
        if not config.targets:
            raise InputError("no target inputs")
        sites = list(config.sites) if config.sites else [default_site(model)]
        for site in sites:
            model.resolve_site(site)
        target_template = _template(config.target_template, "target_template")
        concept_template = _template(config.concept_template if config.concept_template is not None else target_template, "concept_template")
        mismatch = position_note(concept_template, target_template, config.reduction)
        if mismatch:
            warnings.warn(mismatch, PositionMismatchWarning, stacklevel=2)
        targets = [target_template.format(t) for t in config.targets]
        test = config.test if config.test != "auto" else "monte_carlo"
        bonferroni = (config.bonferroni if config.bonferroni is not None else test == "one_sample_0.5") and test != "monte_carlo"
        threshold = config.alpha / 2 if bonferroni else config.alpha
        if config.tgcav is not None and len(sites) < 2:
            raise InputError(f"TGCAV fuses CAVs across layers: give at least 2 sites, got {sites}")
        if config.tgcav is not None and config.relative and config.tgcav.align:
            raise InputError("TGCAV's alignment uses random-random CAVs as negatives, which relative TCAV has none of: set tgcav.align to false")
        gcav_inputs: dict[str, dict[str, list]] = {}

        objective = _objective(config, model)  # a multi-token target fails here, before compute
        objective_key = {"objective": config.objective, "gradient_of": config.gradient_of}
        recipe = ex.Recipe(
            kind=config.probe, C=config.C, test_size=config.test_size,
            standardize=config.standardize if config.standardize is not None else config.probe != "sgd_hinge",
            normalize=config.normalize_cav, class_weight="balanced" if config.balance == "class_weight" else None,
            min_accuracy=config.min_cav_accuracy, count_negative=config.gradient_of == "loss",
        )
        balanced = config.balance in ("truncate", "subsample")
        m = config.n_random

        # Texts: every concept example and, for plain TCAV, the pool (the Monte Carlo replays draw
        # pseudo-concepts and random sets from all of it), all in the concept template.
        concept_texts = [[concept_template.format(e) for e in c.examples] for c in concept_sets]
        pool_texts: list[str] = []
        if not config.relative:
            pool = _pool(config.random_pool)
            used = {e for c in concept_sets for e in c.examples}
            pool_texts = [concept_template.format(e) for e in dict.fromkeys(pool.examples) if e not in used]
        all_texts = list(dict.fromkeys([t for ts in concept_texts for t in ts] + pool_texts))
        row_of = {t: i for i, t in enumerate(all_texts)}
        cache = FeatureCache(model, enabled=config.cache)
        acts = cache.activations(all_texts, sites, config.reduction, config.batch_size)

        result = TCAVResult(n_targets=len(targets))
        result.conventions = {
            "mode": "relative" if config.relative else "concept_vs_random",
            "probe": config.probe,
            "C": config.C,
            "standardize": config.standardize if config.standardize is not None else config.probe != "sgd_hinge",
            "balance": config.balance,
            "normalize_cav": config.normalize_cav,
            "min_cav_accuracy": config.min_cav_accuracy,
            "gradient_of": config.gradient_of,
            "counted_sign": "S < 0" if config.gradient_of == "loss" else "S > 0",
            "test": test,
            "test_note": TEST_NOTES[test],
            "n_null": config.n_null if test == "monte_carlo" else 0,
            "statistic": STATISTIC_NOTES[config.statistic] if test == "monte_carlo" else "t statistic of the kept runs' sign scores",
            "quality_gate": f"a concept with more than {GATE:.0%} of its CAVs below min_cav_accuracy is not tested; "
            + ("the Monte Carlo statistic and the score use all CAVs, for the concept and every replay alike" if test == "monte_carlo"
               else "the t-tests use the kept CAVs"),
            "alternative": config.alternative if test == "monte_carlo" else "two-sided",
            "equal_var": config.equal_var,
            "bonferroni": bonferroni,
            "alpha": config.alpha,
            "threshold": threshold,
            "reduction": config.reduction,
            "n_random": m,
            "seed": config.seed,
            "sites": sites,
            "target_template": target_template,
            "concept_template": concept_template,
            "position_warning": mismatch,
            "magnitude": "magnitude_mean = mean(S) (captum >= 0.5); magnitude_ratio = sum|S+|/sum|S|",
        }

        def rows(texts: list[str], site: str) -> torch.Tensor:
            return acts[site][[row_of[t] for t in texts]].double()

        def outcome_for(runs: ex.Runs, null: list[tuple[float, ...]] | None, baseline: list[float] | None) -> TestOutcome:
            if len(targets) < 2:
                return TestOutcome(float("nan"), "", "1 target input: each run scores 0 or 1; give more targets to test")
            if runs.gated(GATE):
                return TestOutcome(float("nan"), "", f"{runs.n_dropped}/{m} CAVs near chance (accuracy < {config.min_cav_accuracy}): not tested")
            if test == "monte_carlo":
                from conceptkit_tcav.scores import monte_carlo_p

                return monte_carlo_p(runs.statistic(config.statistic), null or [], config.alternative)
            kept = runs.signs[runs.keep].tolist()
            return t_test(kept, baseline, test, config.equal_var)

        for site in sites:
            G = cache.gradients(targets, site, config.reduction, objective_key, objective, config.batch_size).double()
            per_site_cavs: dict[str, ex.Runs] = {}

            if not config.relative:
                pool_rows = rows(pool_texts, site)
                n_pool = len(pool_texts)
                for ci, c in enumerate(concept_sets):
                    n_c = len(c)
                    n_r = config.random_size or n_c
                    if balanced:
                        n_r = min(n_r, n_c)
                    if n_c + n_r > n_pool:
                        n_r = n_pool - n_c
                        if n_r < 4:
                            raise InputError(
                                f"the random pool has {n_pool} usable examples: too few to draw a pseudo-concept of {n_c} and a random set"
                            )
                    n_pos = min(n_c, n_r) if balanced else n_c
                    plan = ex.Plain(n_concept=n_c, n_pool=n_pool, runs=m, n_pos=n_pos, n_neg=n_r, balance=config.balance)
                    rng = np.random.default_rng([config.seed, ci])
                    c_idx, r_idx, disjoint = plan.draw(rng, np.arange(n_pool))
                    c_rows = rows(concept_texts[ci], site)
                    runs = ex.fit_runs(c_rows[torch.from_numpy(c_idx)], pool_rows[torch.from_numpy(r_idx)], G, recipe, seed=config.seed)
                    null: list[tuple[float, ...]] | None = None
                    baseline_scores: list[float] | None = None
                    random_side = {"n_dropped": 0, "n_cavs": 0, "mean": float("nan"), "std": float("nan")}
                    untestable = len(targets) < 2 or runs.gated(GATE)
                    if test == "monte_carlo" and not untestable:
                        rep = ex.replays(plan.replay, pool_rows, pool_rows, G, recipe, config.n_null, seed=config.seed + 101 * ci,
                                         statistic=config.statistic, gate=GATE)
                        null, random_side = rep.stats, _null_side(rep)
                    elif test == "two_sample_random":
                        # TF's baseline: the first random set against the others (drawn afresh, outside it, when sets overlap).
                        anchor = r_idx[0]
                        partners = r_idx[1:] if disjoint else np.setdiff1d(np.arange(n_pool), anchor)[
                            ex.draw_sets(rng, n_pool - len(anchor), m - 1, n_r)[0]]
                        base = ex.fit_runs(pool_rows[torch.from_numpy(np.tile(anchor, (m - 1, 1)))], pool_rows[torch.from_numpy(partners)], G, recipe, seed=config.seed + 1)
                        baseline_scores = base.signs[base.keep].tolist()
                        random_side = {"n_dropped": base.n_dropped, "n_cavs": m - 1, "mean": float(base.signs.mean()), "std": float(base.signs.std(unbiased=False))}
                    outcome = outcome_for(runs, null, baseline_scores)
                    result.conventions.setdefault("random_sets", {})[c.name] = {
                        "size": n_r, "drawn": "disjoint" if disjoint else "with replacement across sets (each set without repeats)",
                    }
                    result.rows.append(self._row(c.name, site, runs, G, outcome, threshold, config, c.fingerprint, random_side))
                    per_site_cavs[c.name] = runs
                    if config.tgcav is not None:  # concept vs the random examples its runs used: the fusion's separation check
                        gcav_inputs.setdefault(c.name, {}).setdefault("separation", []).append((c_rows, pool_rows[torch.from_numpy(np.unique(r_idx))]))
                    if config.tgcav is not None and config.tgcav.align:
                        a, b = np.triu_indices(m, 1)  # random-random CAVs among this concept's random sets: negatives
                        rr = ex.fit_runs(pool_rows[torch.from_numpy(r_idx[a])], pool_rows[torch.from_numpy(r_idx[b])], G, recipe, seed=config.seed + 2)
                        gcav_inputs.setdefault(c.name, {}).setdefault("random", []).append(rr.directions)
            else:
                pairwise = len(concept_sets) == 2
                for ci, c in enumerate(concept_sets):
                    if pairwise and ci == 1:
                        first = per_site_cavs[concept_sets[0].name]
                        runs = ex.Runs(-first.directions, first.accuracy, *batch_scores(G, -first.directions, recipe.count_negative), first.keep, -first.cosines)
                        prev = result.rows[-1]
                        mirrored = TestOutcome(
                            prev.p_value, {"above": "below", "below": "above"}.get(prev.direction, ""),
                            prev.test_note, p_greater=prev.p_less, p_less=prev.p_greater,
                        )
                        row = self._row(c.name, site, runs, G, mirrored, threshold, config, c.fingerprint, prev.random_side)
                        row.same_test_as = concept_sets[0].name
                        result.rows.append(row)
                        per_site_cavs[c.name] = runs
                        continue
                    others = [t for j, ts in enumerate(concept_texts) if j != ci for t in ts]
                    both = rows(concept_texts[ci] + others, site)
                    n_c, n_o = len(concept_texts[ci]), len(others)
                    s_p, s_n = max(4, int(config.subsample * n_c)), max(4, int(config.subsample * n_o))
                    if balanced:
                        s_p = s_n = min(s_p, s_n)
                    plan_r = ex.Relative(n_concept=n_c, n_other=n_o, runs=m, n_pos=s_p, n_neg=s_n)
                    rng = np.random.default_rng([config.seed, 1000 + ci])
                    p_idx, n_idx = plan_r.draw(rng, np.arange(n_c), np.arange(n_c, n_c + n_o))
                    runs = ex.fit_runs(both[torch.from_numpy(p_idx)], both[torch.from_numpy(n_idx)], G, recipe, seed=config.seed)
                    null = None
                    random_side = {"n_dropped": 0, "n_cavs": 0, "mean": float("nan"), "std": float("nan")}
                    if test == "monte_carlo" and not (len(targets) < 2 or runs.gated(GATE)):
                        rep = ex.replays(plan_r.replay, both, both, G, recipe, config.n_null, seed=config.seed + 101 * ci,
                                         statistic=config.statistic, gate=GATE)
                        null, random_side = rep.stats, _null_side(rep)
                    outcome = outcome_for(runs, null, None)
                    result.rows.append(self._row(c.name, site, runs, G, outcome, threshold, config, c.fingerprint, random_side))
                    per_site_cavs[c.name] = runs
                    if config.tgcav is not None:
                        gcav_inputs.setdefault(c.name, {}).setdefault("separation", []).append((both[:n_c], both[n_c:]))
            for name, runs in per_site_cavs.items():
                result.cavs[f"{name}|{site}"] = runs.directions.float().tolist()
                result.cav_accuracies[f"{name}|{site}"] = runs.accuracy.tolist()
                if config.tgcav is not None:
                    gcav_inputs.setdefault(name, {}).setdefault("cavs", []).append(runs.directions)
                    gcav_inputs[name].setdefault("grads", []).append(G)

        if config.tgcav is not None:
            from conceptkit_tcav.gcav import tgcav

            t = config.tgcav
            for name, inputs in gcav_inputs.items():
                out = tgcav(
                    inputs["cavs"], inputs.get("random"), inputs["grads"], dim_align=t.dim_align, do_align=t.align, fuse_mode=t.fuse,
                    embed_dim=t.embed_dim, align_epochs=t.align_epochs, fuse_epochs=t.fuse_epochs, var_weight=t.var_weight,
                    sim_weight=t.sim_weight, tau=t.tau, seed=t.seed, count_negative=recipe.count_negative,
                    separation=inputs.get("separation"), sep_weight=t.sep_weight,
                )
                result.tgcav[name] = {
                    "sites": sites,
                    "tcav": out.tcav_scores.mean(1).tolist(),
                    "tgcav": out.tgcav_scores.mean(1).tolist(),
                    "statistics": out.statistics(),
                    "accuracy_tcav": out.accuracy_tcav,
                    "accuracy_tgcav": out.accuracy_tgcav,
                    "settings": t.model_dump(),
                }
        return result

    @staticmethod
    def _row(name: str, site: str, runs: Any, G: Any, outcome: Any, threshold: float, config: TCAVConfig,
             fp: str | None, random_side: dict[str, Any]) -> Any:
        import math

        from conceptkit_tcav.result import TCAVRow
        from conceptkit_tcav.scores import directional_derivatives, run_scores

        # Monte Carlo: the score is over all runs, as the test statistic (the filter only gates);
        # the t-test options score the CAVs the filter kept (TF-style), all when none is kept.
        keep = runs.keep if (config.test in ("two_sample_random", "one_sample_0.5") and bool(runs.keep.any())) else runs.keep | True
        per_run = [run_scores(directional_derivatives(G, v), count_negative=config.gradient_of == "loss") for v in runs.directions]
        kept = [s for s, k in zip(per_run, keep.tolist()) if k]
        signs = [s.sign for s in kept]
        mean = sum(signs) / len(signs)
        tested = not math.isnan(outcome.p_value)
        return TCAVRow(
            concept=name,
            site=site,
            mean=mean,
            std=float((sum((s - mean) ** 2 for s in signs) / len(signs)) ** 0.5),
            p_value=outcome.p_value,
            significant=bool(tested and outcome.p_value < threshold),
            direction=outcome.direction,
            tested=tested,
            test_note=outcome.note,
            p_greater=outcome.p_greater,
            p_less=outcome.p_less,
            magnitude_mean=sum(s.magnitude_mean for s in kept) / len(kept),
            magnitude_ratio=sum(s.magnitude_ratio for s in kept) / len(kept),
            cav_accuracy=float(runs.accuracy.mean()),
            cav_accuracy_min=float(runs.accuracy.min()),
            low_quality=runs.gated(GATE),
            cosine_mean=float(runs.cosines.mean()),
            n_chance_cavs=runs.n_dropped,
            n_runs=len(per_run),
            scores=signs,
            examples_fingerprint=fp,
            random_side=random_side,
        )
