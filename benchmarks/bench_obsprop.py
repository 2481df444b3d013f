"""ObsProp on SmolLM2-135M: the data-free ranking over every head, and path patching.

1. Feature norms of all 270 heads for " she" - " he": conceptkit's batched pull-back (per layer,
   GQA heads expanded once) vs the reference notebook's per-head loop (``get_attn_normal`` on
   HF slices ``v_proj[kv(h)]``, ``o_proj[:, h]``), both from the same weights; results checked equal.
2. Path patching from one prompt pair: the traces (two forwards plus attention patterns), the
   OV-only patching score of every head, and the greedy search with (max_length, num_paths) =
   (3, 10), against one plain forward of the pair as the yardstick.
"""

from __future__ import annotations

import time

import torch

from benchmarks._timing import interleaved, report


def main() -> None:
    import conceptkit as ck
    from conceptkit_obsprop.circuit import Circuit
    from conceptkit_obsprop.config import Observable
    from conceptkit_obsprop.features import final_feature, head_feature_norms
    from conceptkit_obsprop.observables import observable_vector
    from conceptkit_obsprop.patching import Patcher
    from conceptkit_obsprop.prompts import prompts
    from conceptkit_obsprop.trace import trace

    model = ck.load_model("smollm2-135m", backend="nnsight")
    hf = model.hf
    c = Circuit(model)
    n = observable_vector(Observable(positive_tokens=[" she"], negative_tokens=[" he"]), model.tokenizer, c.W_U.shape[1])
    d_h = c.d // c.n_heads

    def reference_loop() -> torch.Tensor:
        y = hf.lm_head.weight.T @ n
        out = torch.zeros(c.n_layers, c.n_heads)
        with torch.no_grad():
            for layer in range(c.n_layers):
                attn = hf.model.layers[layer].self_attn
                for h in range(c.n_heads):
                    kv = h // c.group
                    W_val = attn.v_proj.weight[kv * d_h:(kv + 1) * d_h, :]
                    W_out = attn.o_proj.weight[:, h * d_h:(h + 1) * d_h]
                    out[layer, h] = torch.linalg.norm(W_val.T @ (W_out.T @ y))
        return out

    def ours() -> torch.Tensor:
        return head_feature_norms(Circuit(model), n)  # a fresh circuit: weights are read every time

    assert torch.allclose(ours(), reference_loop(), rtol=1e-4, atol=1e-4)
    times = interleaved({"reference per-head loop (HF slices)": reference_loop, "conceptkit head_feature_norms": ours}, repeats=5)
    report(f"data-free ranking of all {c.n_layers * c.n_heads} heads (SmolLM2, ' she' - ' he'):", times,
           "reference per-head loop (HF slices)")

    f = prompts(model.tokenizer, "subject", "female", 0)[0]
    m = prompts(model.tokenizer, "subject", "male", 0)[0]
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    model.run([f.text, m.text])
    steps["one plain forward of the pair"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pos, neg = trace(model, f.text), trace(model, m.text)
    steps["traces of the pair (activations + patterns)"] = time.perf_counter() - t0
    patcher = Patcher(c, pos, neg, final_feature(c, n, "approx", pos))
    t0 = time.perf_counter()
    patcher.head_scores()
    steps["OV-only patching score of every head"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_length, _ = patcher.search(3, 10)
    steps["greedy path search (3, 10)"] = time.perf_counter() - t0
    n_candidates = sum(1 for _ in patcher.extend([])[0])
    report(f"path patching on SmolLM2 ({pos.n_tokens}-token prompt pair; {n_candidates} length-1 candidates):", steps,
           "one plain forward of the pair")
    print("  best paths: " + "; ".join(f"{level[0].label} ({level[0].contrib:.3f})" for level in per_length))
