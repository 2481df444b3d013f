"""ActivationReasoning generation vs plain generation on SmolLM2 (same prompts, same length).

4 prompts, ``CK_BENCH_NEW_TOKENS`` (default 32) new tokens, greedy, nnsight backend. AR here is
the whole runtime: the detection pass over the prompts (a capture that stops at block 12), SAE
(concept-vector) encoding, detection, forward chaining, and generation with the reasoning policy
(one site read per step, the steering delta on the newest token). The dictionary is a concept-vector
one built once beforehand (not timed). Interleaved medians of ``CK_BENCH_REPEATS`` (default 3).

Target (issue 17): AR generation <= 1.5x plain generation (the paper: 0.375 s vs 0.107 s per sample).
"""

from __future__ import annotations

import os

import torch

import conceptkit as ck
from benchmarks._timing import interleaved, report

SITE = "blocks.12.hook_resid_post"
NEW = int(os.environ.get("CK_BENCH_NEW_TOKENS", "32"))
REPEATS = int(os.environ.get("CK_BENCH_REPEATS", "3"))
PROMPTS = [
    "The train has a red car, a white car and a blue car. It comes from",
    "The flag is green, white and orange. The country is",
    "A yellow and black sign stood by the road, and",
    "The sky was blue and the grass was green when",
]
EXAMPLES = ["a red apple", "the red door", "a blue sky", "the blue sea", "green grass", "a green leaf", "white snow", "the white wall",
            "France is a country", "I visited France", "the old man walked", "we ate bread"]


def main() -> None:
    from conceptkit_activation_reasoning.build import build_dictionary
    from conceptkit_activation_reasoning.engine import ActivationReasoner, ARSettings

    torch.set_grad_enabled(False)
    model = ck.load_model("smollm2-135m", backend="nnsight")
    d, sae, _ = build_dictionary(model, SITE, EXAMPLES, ["red", "blue", "green", "white", "France"], sae=None)
    rules = ["red and white and blue -> France", "green and white -> France"]
    ar = ActivationReasoner(model, d, rules, sae=sae, settings=ARSettings(allow_multi=True))
    out = ar.generate(PROMPTS, max_new_tokens=NEW)
    print(f"  fired per prompt: {[i.concluded for i in out.inferences]}")
    times = interleaved({
        "plain generate": lambda: model.generate(PROMPTS, max_new_tokens=NEW, batch_size=len(PROMPTS)),
        "ActivationReasoning generate": lambda: ar.generate(PROMPTS, max_new_tokens=NEW),
    }, repeats=REPEATS)
    report(f"SmolLM2-135M, {len(PROMPTS)} prompts, {NEW} new tokens (target AR <= 1.5x plain)", times, "plain generate")


if __name__ == "__main__":
    main()
