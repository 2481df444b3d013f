"""Example conceptkit plugin: the difference-of-means concept vector.

The whole plugin: a config, a result, a method, and one hook that registers the method.
"""

from __future__ import annotations

import conceptkit as ck


class DiffMeansConfig(ck.MethodConfig):
    concept: str
    positive: list[str]
    negative: list[str]
    site: str = "blocks.1.hook_resid_post"
    reduce: str = "mean"


class DiffMeansResult(ck.Result):
    concept: str = ""
    site: str = ""
    vector: list[float] = []
    separation: float = 0.0  # fraction of examples on the right side of the midpoint

    def summary(self) -> str:
        return f"{self.concept} @ {self.site}: |v|=1, separation {self.separation:.2f} over {len(self.vector)} dims"

    def drafts(self) -> list[ck.RecordDraft]:
        import torch  # here, not at import: listing plugins must stay fast

        return [
            ck.RecordDraft(
                tensors={"vector": torch.tensor(self.vector)},
                concept=self.concept,
                site=self.site,
                reduction=self.config.get("reduce"),
                examples_fingerprint=ck.fingerprint(self.config["positive"] + self.config["negative"]),
                metrics={"separation": self.separation},
            )
        ]


class DiffMeans(ck.Method):
    name = "diffmeans"
    description = "Concept vector = normalised mean(positive) - mean(negative) activations."
    Config = DiffMeansConfig

    def compute(self, model, config, store):  # type: ignore[no-untyped-def]
        acts = model.capture(config.positive + config.negative, [config.site], reduce=config.reduce)[config.site]
        pos, neg = acts[: len(config.positive)], acts[len(config.positive) :]
        direction = pos.mean(0) - neg.mean(0)
        direction = direction / direction.norm()
        midpoint = ((pos.mean(0) + neg.mean(0)) / 2) @ direction
        scores = acts @ direction - midpoint
        correct = (scores[: len(pos)] > 0).sum() + (scores[len(pos) :] <= 0).sum()
        return DiffMeansResult(
            concept=config.concept, site=config.site, vector=direction.tolist(), separation=float(correct) / len(acts)
        )


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    register(DiffMeans)
