"""The TCAV method: CAVs by linear probes, sensitivities once per site, random runs, tests.

Gradients of the objective at each site are computed once for all target inputs and reused for
every CAV (``S = G @ v``): that is what makes TCAV cheap, where captum recomputes activations
and gradients per experimental set.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import conceptkit as ck
from conceptkit.errors import InputError
from conceptkit_tcav.config import ConceptSpec, TCAVConfig

if TYPE_CHECKING:  # the heavy modules (torch, sklearn) load when the method runs, not when listed
    from conceptkit import concepts as library
    from conceptkit_tcav.result import TCAVResult, TCAVRow


def _concept(spec: str | ConceptSpec) -> "library.ConceptSet":
    from conceptkit import concepts as library

    if isinstance(spec, ConceptSpec):
        return library.from_examples(spec.name, spec.examples)
    return library.load(spec)


def _pool(spec: str | list[str]) -> "library.ConceptSet":
    from conceptkit import concepts as library

    if isinstance(spec, list):
        if not spec:
            raise InputError("the random pool is empty")
        return library.from_examples("random pool", spec)
    return library.load(spec)


def _objective(config: TCAVConfig, model: ck.Model) -> Any:
    """The scalar whose gradient TCAV uses; validated here, before any compute."""
    from conceptkit.objectives import TokenLogit, as_objective

    if config.gradient_of == "target":
        return as_objective(dict(config.objective), model)
    # TF convention: the cross-entropy of the objective's (positive) token; S < 0 is counted.
    token = config.objective.get("positive", config.objective.get("token"))
    if token is None:
        raise InputError("gradient_of='loss' needs an objective naming a token ('token' or 'positive')")
    log_prob = as_objective(TokenLogit(token=token, log_prob=True), model)
    return lambda out, batch: -log_prob(out, batch)


class TCAV(ck.Method):
    name = "tcav"
    description = "Testing with concept activation vectors (Kim et al. 2018), with significance tests."
    Config = TCAVConfig
    requires = frozenset({ck.Capability.GRADIENTS})

    def compute(self, model: ck.Model, config: TCAVConfig, store: Any) -> "TCAVResult":
        import torch

        from conceptkit import concepts as library
        from conceptkit.probes import fit_probe
        from conceptkit_tcav.result import TCAVResult
        from conceptkit_tcav.scores import directional_derivatives, run_scores

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
        for site in config.sites:
            model.resolve_site(site)
        targets = [config.target_template.format(t) for t in config.targets]
        test = config.test if config.test != "auto" else ("one_sample_0.5" if config.relative else "two_sample_random")
        bonferroni = config.bonferroni if config.bonferroni is not None else test == "one_sample_0.5"
        threshold = config.alpha / 2 if bonferroni else config.alpha

        objective = _objective(config, model)  # a multi-token target fails here, before compute

        # Examples: the concept sets and, for plain TCAV, disjoint random sets from the pool.
        randoms: list = []
        if not config.relative:
            pool = _pool(config.random_pool)
            concept_texts = {e for c in concept_sets for e in c.examples}
            available = len([e for e in pool.examples if e not in concept_texts])
            size = config.random_size or min(min(len(c) for c in concept_sets), available // config.n_random)
            if size < 4:
                raise InputError(
                    f"the random pool {pool.name!r} has {available} usable examples: too few for {config.n_random} random sets"
                )
            randoms = library.random_sets(config.n_random, size, pool, seed=config.seed, exclude=concept_texts)
        texts = list(dict.fromkeys([e for c in concept_sets + randoms for e in c.examples]))
        position = {t: i for i, t in enumerate(texts)}
        acts = model.capture(texts, config.sites, reduce=config.reduction, batch_size=config.batch_size)

        result = TCAVResult(n_targets=len(targets))
        result.conventions = {
            "mode": "relative" if config.relative else "concept_vs_random",
            "probe": config.probe,
            "standardize": config.standardize if config.standardize is not None else config.probe == "logistic",
            "balance": config.balance,
            "normalize_cav": config.normalize_cav,
            "gradient_of": config.gradient_of,
            "counted_sign": "S < 0" if config.gradient_of == "loss" else "S > 0",
            "test": test,
            "equal_var": config.equal_var,
            "bonferroni": bonferroni,
            "alpha": config.alpha,
            "threshold": threshold,
            "reduction": config.reduction,
            "n_random": config.n_random,
            "seed": config.seed,
            "magnitude": "magnitude_mean = mean(S) (captum >= 0.5); magnitude_ratio = sum|S+|/sum|S|",
        }

        def rows_of(c: Any, site_acts: torch.Tensor) -> torch.Tensor:
            return site_acts[[position[e] for e in c.examples]]

        for site in config.sites:
            site_acts = acts[site]
            G = model.grad(targets, site, objective, reduce=config.reduction, batch_size=config.batch_size)  # once per site

            def score(pos: torch.Tensor, neg: torch.Tensor, seed: int) -> tuple[Any, torch.Tensor, float]:
                probe = fit_probe(
                    pos, neg, config.probe, balance=config.balance, test_size=config.test_size, seed=seed,
                    normalize=config.normalize_cav, standardize=config.standardize,
                )
                S = directional_derivatives(G, probe.direction)
                return run_scores(S, count_negative=config.gradient_of == "loss"), probe.direction, probe.accuracy

            baseline_scores: list[float] | None = None
            anchor_means: list[float] | None = None
            if not config.relative:
                # Random-random baseline: random_0 against every other random set (TF). The
                # calibrated test repeats this with every random set as the anchor.
                anchors = randoms if test == "random_anchors" else randoms[:1]
                anchor_runs = []
                for k, anchor in enumerate(anchors):
                    others = [r for r in randoms if r is not anchor]
                    anchor_runs.append([score(rows_of(anchor, site_acts), rows_of(r, site_acts), config.seed + j) for j, r in enumerate(others)])
                base_runs = anchor_runs[0]
                baseline_scores = [s.sign for s, _, _ in base_runs]
                anchor_means = [float(sum(s.sign for s, _, _ in runs) / len(runs)) for runs in anchor_runs]
                result.rows.append(self._row("random (baseline)", site, base_runs, baseline_scores, test, config, threshold, is_baseline=True, fp=randoms[0].fingerprint))

            for ci, c in enumerate(concept_sets):
                pos_all = rows_of(c, site_acts)
                runs = []
                if config.relative:
                    others = [o for o in concept_sets if o is not c]
                    neg_all = torch.cat([rows_of(o, site_acts) for o in others])
                    rng = random.Random(config.seed + 1000 * ci)
                    for i in range(config.n_random):
                        p_idx = rng.sample(range(len(pos_all)), max(4, int(config.subsample * len(pos_all))))
                        n_idx = rng.sample(range(len(neg_all)), max(4, int(config.subsample * len(neg_all))))
                        runs.append(score(pos_all[p_idx], neg_all[n_idx], config.seed + i))
                else:
                    for i, r in enumerate(randoms):
                        runs.append(score(pos_all, rows_of(r, site_acts), config.seed + i))
                row = self._row(c.name, site, runs, baseline_scores, test, config, threshold, fp=c.fingerprint, anchor_means=anchor_means)
                result.rows.append(row)
                result.cavs[f"{c.name}|{site}"] = [v.tolist() for _, v, _ in runs]
                result.cav_accuracies[f"{c.name}|{site}"] = [a for _, _, a in runs]
        return result

    @staticmethod
    def _row(name: str, site: str, runs: list, baseline: list[float] | None, test: str, config: TCAVConfig,
             threshold: float, is_baseline: bool = False, fp: str | None = None,
             anchor_means: list[float] | None = None) -> "TCAVRow":
        import torch

        from conceptkit_tcav.result import TCAVRow
        from conceptkit_tcav.scores import anchor_p_value, p_value

        accs = [a for _, _, a in runs]
        mean_acc = float(sum(accs) / len(accs))
        # A CAV at chance is noise: it is flagged and left out of the score, never silently
        # scored. A row with more than a quarter of its CAVs at chance is not tested at all.
        chance = [a < config.min_cav_accuracy for a in accs] if not is_baseline else [False] * len(accs)
        kept = [run for run, bad in zip(runs, chance) if not bad] or runs
        low = sum(chance) > len(runs) / 4
        signs = [s.sign for s, _, _ in kept]
        t = torch.tensor(signs, dtype=torch.float64)
        if is_baseline:
            p = float("nan")
            significant = False
        elif test == "random_anchors":
            p = anchor_p_value(float(t.mean()), anchor_means or [])
        else:
            p = p_value(signs, baseline, test, config.equal_var)
        if not is_baseline:
            significant = bool(p < threshold) and not low
        return TCAVRow(
            concept=name,
            site=site,
            mean=float(t.mean()),
            std=float(t.std(unbiased=False)),
            p_value=p,
            significant=significant,
            magnitude_mean=float(sum(s.magnitude_mean for s, _, _ in kept) / len(kept)),
            magnitude_ratio=float(sum(s.magnitude_ratio for s, _, _ in kept) / len(kept)),
            cav_accuracy=mean_acc,
            cav_accuracy_min=float(min(accs)),
            low_quality=low,
            n_chance_cavs=sum(chance),
            n_runs=len(runs),
            scores=signs,
            baseline=is_baseline,
            examples_fingerprint=fp,
        )
