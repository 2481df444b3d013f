"""Capture of one residual site on SmolLM2: conceptkit vs raw HF hook, run_with_cache, nnsight trace.

64 prompts of ~32 tokens, batch 16, site blocks.15.hook_resid_post, last-token reduction kept
by every contender (the peers keep full [B, T, d] and we slice; that is their natural use).
All contenders run the very same model objects (eager attention), interleaved.
"""

from __future__ import annotations

import torch

import conceptkit as ck
from benchmarks._timing import interleaved, report

SITE = "blocks.15.hook_resid_post"
LAYER = 15


def prompts() -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while seven curious cats watch from an old wooden fence".split()
    out = []
    for i in range(64):
        n = 26 + (i % 8)
        out.append(" ".join(words[(i + j) % len(words)] for j in range(n)))
    return out


VIRTUAL = SITE + ".hook_same"


class SameSite:
    """An identity virtual-site provider: what the virtual-site engine costs by itself."""

    base_site = SITE

    def names(self) -> list[str]:
        return [VIRTUAL]

    def run(self, x: torch.Tensor, taps: dict) -> torch.Tensor | None:
        return taps[VIRTUAL](x)


def main() -> None:
    torch.set_grad_enabled(False)
    texts = prompts()
    tl = ck.load_model("smollm2-135m", backend="transformer_lens")
    nn = ck.load_model("smollm2-135m", backend="nnsight")
    nn.add_virtual_sites(SameSite())
    batches = [nn.tokenize(texts[i : i + 16]) for i in range(0, 64, 16)]
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"  64 prompts, {n_tokens / 64:.1f} tokens on average, batch 16")
    hf = nn.hf

    def raw_hf() -> None:
        outs = []
        layer = hf.model.layers[LAYER]
        for b in batches:
            handle = layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
            try:
                with torch.inference_mode():
                    hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
            finally:
                handle.remove()
            last = b.attention_mask.sum(1) - 1
            outs[-1] = outs[-1][torch.arange(len(b)), last].cpu()

    def raw_tl() -> None:
        for b in batches:
            with torch.inference_mode():
                _, cache = tl.tl.run_with_cache(b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, names_filter=[SITE])
            last = b.attention_mask.sum(1) - 1
            cache[SITE][torch.arange(len(b)), last].cpu()

    nn_model = nn.nnsight_model

    def raw_nnsight() -> None:
        for b in batches:
            with nn_model.trace({"input_ids": b.input_ids, "attention_mask": b.attention_mask, "position_ids": b.position_ids}):
                saved = nn_model.model.layers[LAYER].output.save()
            out = saved[0] if isinstance(saved, tuple) else saved
            last = b.attention_mask.sum(1) - 1
            out[torch.arange(len(b)), last].cpu()

    def ck_capture(model: ck.Model):
        return lambda: model.capture(texts, [SITE], reduce="last", batch_size=16)

    times = interleaved(
        {
            "raw HF forward + torch hook": raw_hf,
            "conceptkit capture (nnsight backend)": ck_capture(nn),
            "raw nnsight trace": raw_nnsight,
            "TransformerLens run_with_cache": raw_tl,
            "conceptkit capture (TL backend)": ck_capture(tl),
            # A raw module path disables the early stop: the cost of the framework alone.
            "conceptkit, full forward (raw path)": lambda: nn.capture(texts, [f"model.layers.{LAYER}:output"], reduce="last", batch_size=16),
            # A virtual site (identity provider) on the same layer: the cost of the virtual-site engine.
            "conceptkit, virtual site (nnsight)": lambda: nn.capture(texts, [VIRTUAL], reduce="last", batch_size=16),
        },
        repeats=5,
    )
    report("capture, one site:", times, "raw HF forward + torch hook")
    print(f"  conceptkit(nnsight) / raw HF           = {times['conceptkit capture (nnsight backend)'] / times['raw HF forward + torch hook']:.3f}x  (target <= 1.10)")
    print(f"  conceptkit(TL) / TL run_with_cache     = {times['conceptkit capture (TL backend)'] / times['TransformerLens run_with_cache']:.3f}x  (target <= 1.05)")
    print(f"  conceptkit(nnsight) / raw nnsight trace = {times['conceptkit capture (nnsight backend)'] / times['raw nnsight trace']:.3f}x  (target <= 1.05)")
    print(f"  without the early stop: conceptkit / raw HF = {times['conceptkit, full forward (raw path)'] / times['raw HF forward + torch hook']:.3f}x  (target <= 1.05)")
    print(f"  virtual site / canonical site (nnsight)    = {times['conceptkit, virtual site (nnsight)'] / times['conceptkit capture (nnsight backend)']:.3f}x")
    print("  (conceptkit stops the forward once the requested site has fired: layer 15 of 30 here)")


if __name__ == "__main__":
    main()
