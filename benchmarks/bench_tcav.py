"""TCAV on SmolLM2: conceptkit vs captum's TCAV, one concept, 20 random sets, one site, 30 targets.

Both run the same experiment shape on the same model object and texts: CAVs for
(concept, random_i) and (random_0, random_j), scores for every CAV on the same target inputs.
captum needs fixed-length inputs (it flattens the layer), so every text is tokenised to 24
tokens for both; conceptkit uses its default `last`-token reduction, captum its `flatten`.
The score *arithmetic* is identical given equal CAVs (tests/test_tcav_captum_parity.py); here
the CAVs differ (reduction and probe), so the scores are reported side by side, not equated.
The comparison uses TF's run-level test (captum has none built in), so both do the same work.

Then the cache: the default TCAV run (calibrated Monte Carlo test) on an empty activation and
gradient cache, and again on the filled one (only the probes, replays and scores are redone).
"""

from __future__ import annotations

import tempfile
import time

import torch

import conceptkit as ck
from conceptkit import concepts

SITE, LAYER, T = "blocks.18.hook_resid_post", 18, 24


def main() -> None:
    from captum.concept import TCAV, Concept

    model = ck.load_model("smollm2-135m", backend="nnsight")
    hf, tok = model.hf, model.tokenizer
    concept = list(concepts.load("positive_sentiment").examples)[:40]
    pool = concepts.random_sets(20, 40, seed=0, exclude=set(concept))
    targets = list(concepts.load("review_targets_positive").examples)[:30]
    template = "Review: {}\nSentiment:"
    pos_id, neg_id = tok.encode(" positive")[0], tok.encode(" negative")[0]

    config = {
        "concepts": [{"name": "positive", "examples": concept}], "targets": targets, "target_template": template,
        "sites": [SITE], "n_random": 20, "random_size": 40, "probe": "sgd_hinge", "standardize": True,
        "test": "two_sample_random", "min_cav_accuracy": 0.0, "concept_template": "{}", "cache": False,
    }
    t0 = time.perf_counter()
    ours = ck.method("tcav").run(model, config)
    ck_s = time.perf_counter() - t0

    def fixed(texts: list[str]) -> torch.Tensor:
        tok.padding_side = "left"
        return tok(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=T).input_ids

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            mask = (ids != tok.pad_token_id).long()
            logits = self.hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits[:, -1]
            return torch.stack([logits[:, pos_id] - logits[:, neg_id], logits[:, neg_id] - logits[:, pos_id]], 1)

    def loader(texts: list[str]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(list(fixed(texts)), batch_size=16)

    wrapper = Wrapper().eval()
    c = Concept(0, "positive", loader(concept))
    randoms = [Concept(i + 1, f"random_{i}", loader(list(r.examples))) for i, r in enumerate(pool)]
    sets = [[c, r] for r in randoms] + [[randoms[0], r] for r in randoms[1:]]
    inputs = fixed([template.format(t) for t in targets])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tcav = TCAV(wrapper, [f"hf.model.layers.{LAYER}"], save_path=tmp)
        scores = tcav.interpret(inputs, experimental_sets=sets, target=0, processes=1)
        captum_s = time.perf_counter() - t0
    captum_concept = [float(scores[f"0-{r.id}"][f"hf.model.layers.{LAYER}"]["sign_count"][0]) for r in randoms]
    captum_random = [float(scores[f"1-{r.id}"][f"hf.model.layers.{LAYER}"]["sign_count"][0]) for r in randoms[1:]]
    row = ours.row("positive")
    print(f"  conceptkit TCAV: {ck_s:6.1f} s   concept score {row.mean:.3f} ± {row.std:.3f}, p = {row.p_value:.2e}")
    print(f"  captum TCAV:     {captum_s:6.1f} s   concept score {sum(captum_concept) / 20:.3f}, random-random {sum(captum_random) / 19:.3f}")
    print(f"  speed-up: {captum_s / ck_s:.1f}x (target >= 10x)")
    cache_timing(model)


def cache_timing(model: ck.Model) -> None:
    """First run on an empty TCAV cache vs a second run that reuses it (and a third with another test)."""
    from pathlib import Path

    from conceptkit_tcav import cache

    config = {
        "concepts": ["positive_sentiment", "topic_food"], "targets": list(concepts.load("review_targets_positive").examples),
        "target_template": "Review: {}\nSentiment:",
    }
    original = cache.cache_root
    with tempfile.TemporaryDirectory() as tmp:
        cache.cache_root = lambda: Path(tmp)
        try:
            times = []
            for extra in ({}, {}, {"test": "two_sample_random", "seed": 1}):
                t0 = time.perf_counter()
                ck.method("tcav").run(model, {**config, **extra})
                times.append(time.perf_counter() - t0)
        finally:
            cache.cache_root = original
    print(f"  default TCAV, 2 concepts, layer 18: first run {times[0]:6.1f} s, second (cached) {times[1]:6.1f} s "
          f"({times[0] / times[1]:.1f}x), another test + seed from the cache {times[2]:5.1f} s")


if __name__ == "__main__":
    main()
