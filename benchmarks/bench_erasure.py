"""LEACE fit + apply on 20,000 x 576 activations (2 and 10 classes): conceptkit vs concept-erasure.

Both fit from the same float64 tensors with the same options (defaults: leace, affine,
shrinkage, trace constraint) and apply to all rows; interleaved medians of 5 runs. Also: concept
scrubbing throughput on SmolLM2 (tokens/s with the 60 erasers applied) vs a plain forward.
"""

from __future__ import annotations

import torch

from benchmarks._timing import interleaved, report


def leace() -> None:
    from concept_erasure import LeaceFitter as Reference

    from conceptkit_erasure.leace import LeaceFitter, one_hot_labels

    g = torch.Generator().manual_seed(0)
    for k in (2, 10):
        X = torch.randn(20_000, 576, generator=g, dtype=torch.float64) + torch.randn(576, dtype=torch.float64, generator=g)
        y = torch.randint(0, k, (20_000,), generator=g)
        X[torch.arange(20_000), y] += 2.0
        Z = one_hot_labels(y).double()
        times = interleaved(
            {
                "concept-erasure LeaceFitter": lambda: Reference.fit(X, Z).eraser(X),
                "conceptkit LeaceFitter": lambda: LeaceFitter.fit(X, y).eraser(X),
            },
            repeats=5,
        )
        report(f"LEACE fit + apply, 20,000 x 576, {k} classes:", times, "concept-erasure LeaceFitter")
        assert torch.allclose(Reference.fit(X, Z).eraser(X), LeaceFitter.fit(X, y).eraser(X), atol=1e-6)


def scrubbing() -> None:
    import conceptkit as ck
    from conceptkit_erasure.corpus import digit_corpus, token_labels
    from conceptkit_erasure.scrub import fit_scrubber

    model = ck.load_model("smollm2-135m", backend="nnsight")
    texts = digit_corpus(64, seed=1)
    scrubber = fit_scrubber(model, texts[:32], token_labels(model, texts[:32], "digit"))
    erase = scrubber.interventions()
    n_tokens = int(sum(model.tokenize([t]).attention_mask.sum() for t in texts))
    times = interleaved(
        {"plain forward": lambda: model.run(texts, batch_size=16), "forward with 60 erasers": lambda: model.run(texts, erase, batch_size=16)},
        repeats=3,
    )
    report(f"scrubbing throughput on SmolLM2 ({n_tokens} tokens):", times, "plain forward")
    for name, t in times.items():
        print(f"  {name:<40} {n_tokens / t:9.0f} tokens/s")


def main() -> None:
    leace()
    scrubbing()


if __name__ == "__main__":
    main()
