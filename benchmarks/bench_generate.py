"""Steered generation on SmolLM2: conceptkit ``generate`` vs HF ``generate`` with the same hook.

4 prompts (left-padded batch), 64 new tokens, greedy (``CK_BENCH_NEW_TOKENS``,
``CK_BENCH_REPEATS`` and ``CK_BENCH_TL=1`` change the length, the repeats, and add the bridge). The peer is ``hf_model.generate`` with a
forward hook on decoder layer 12 adding a steering vector at every position (its KV cache, its
loop). conceptkit runs the very same model object (nnsight backend) with ``Add`` at
``blocks.12.hook_resid_post``; then with a policy that reads one site at every step and returns
no intervention (the cost of the per-step policy machinery). With ``CK_BENCH_TL=1`` the
TransformerLens bridge is timed too, for information (the same HF modules through its hook
points). All interleaved; the first repeat's ids are checked equal to HF's.

Targets (issue 9): fixed ``Add`` <= 1.2x HF generate; one-site policy <= 1.15x the fixed ``Add``.
"""

from __future__ import annotations

import os

import torch

import conceptkit as ck
import statistics
import time
from collections.abc import Callable

from benchmarks._timing import report
from conceptkit.generation import GenerationPolicy

LAYER = 12
SITE = f"blocks.{LAYER}.hook_resid_post"
READ = "blocks.20.hook_resid_post"
NEW = int(os.environ.get("CK_BENCH_NEW_TOKENS", "64"))
REPEATS = int(os.environ.get("CK_BENCH_REPEATS", "3"))
WITH_TL = os.environ.get("CK_BENCH_TL", "0") == "1"  # also time the TransformerLens bridge
PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The best way to learn a new language is",
    "I went to the restaurant and the food was",
    "Here is a short story about a robot who",
]


def interleaved_wall_and_cpu(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call, the contenders run in turn. On a shared
    machine the CPU time is the steadier measure of the work done (wall time includes waiting)."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


class ReadOne(GenerationPolicy):
    """Reads one site at every step and keeps its norm; steers nothing."""

    reads = [READ]

    def __init__(self) -> None:
        self.norms: list[torch.Tensor] = []

    def step(self, state):  # type: ignore[no-untyped-def]
        self.norms.append(state.reads[READ].norm(dim=-1))
        return []


def main() -> None:
    torch.set_grad_enabled(False)
    nn = ck.load_model("smollm2-135m", backend="nnsight")
    tl = ck.load_model("smollm2-135m", backend="transformer_lens") if WITH_TL else None
    hf = nn.hf
    batch = nn.tokenize(PROMPTS, padding_side="left")
    tokens = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    vector = torch.randn(nn.d_model, generator=torch.Generator().manual_seed(0)) * 4
    add = ck.interventions.Add(site=SITE, vector=vector)
    width = batch.input_ids.shape[1]

    def hook(module, args, output):  # type: ignore[no-untyped-def]
        return output + vector if isinstance(output, torch.Tensor) else (output[0] + vector, *output[1:])

    def hf_generate() -> list[list[int]]:
        handle = hf.model.layers[LAYER].register_forward_hook(hook)
        try:
            out = hf.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False, max_new_tokens=NEW,
                pad_token_id=nn.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
            )
        finally:
            handle.remove()
        eos = nn.tokenizer.eos_token_id
        rows = [r.tolist() for r in out[:, width:]]
        return [r[: r.index(eos) + 1] if eos in r else r for r in rows]

    def ck_add() -> list[list[int]]:
        return [t.tolist() for t in nn.generate(tokens, [add], max_new_tokens=NEW).token_ids]

    def ck_policy() -> list[list[int]]:
        return [t.tolist() for t in nn.generate(tokens, [add], max_new_tokens=NEW, policy=ReadOne()).token_ids]

    def ck_tl_add() -> list[list[int]]:
        assert tl is not None
        return [t.tolist() for t in tl.generate(tokens, [add], max_new_tokens=NEW).token_ids]

    results: dict[str, list[list[int]]] = {}

    def keep(name, fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            results[name] = fn()

        return run

    contenders = {"hf_generate_with_hook": hf_generate, "ck_generate_add": ck_add, "ck_generate_add_policy_read1": ck_policy}
    if WITH_TL:
        contenders["ck_generate_add_transformer_lens"] = ck_tl_add
    times, cpu = interleaved_wall_and_cpu({k: keep(k, f) for k, f in contenders.items()}, REPEATS)
    reference = results["hf_generate_with_hook"]
    for name, ids in results.items():
        assert ids == reference, f"{name} generated other tokens than HF generate"
    n_new = sum(len(r) for r in reference)
    print(f"  {len(PROMPTS)} prompts ({width} tokens padded), {NEW} new tokens max, {n_new} generated in all, greedy, "
          f"median of {REPEATS}")
    report("steered generation, wall time (nnsight backend unless named)", times, "hf_generate_with_hook")
    report("steered generation, process CPU time", cpu, "hf_generate_with_hook")
    for label, t in (("wall", times), ("cpu", cpu)):
        add_ratio = t["ck_generate_add"] / t["hf_generate_with_hook"]
        policy_ratio = t["ck_generate_add_policy_read1"] / t["ck_generate_add"]
        print(f"  [{label}] fixed Add vs HF generate: {add_ratio:.2f}x (target <= 1.20); "
              f"one-site policy vs fixed Add: {policy_ratio:.2f}x (target <= 1.15)")


if __name__ == "__main__":
    main()
