"""SAE training: conceptkit's TopK trainer vs EleutherAI sparsify on the same cached activations.

Both train a TopK SAE (d_sae 4608, k 64, AuxK 1/32, batches of 512 rows, the same rows in the
same order) on SmolLM2 ``blocks.12.hook_resid_post`` activations of the offline corpus
(position 0 left out), captured once and cached. sparsify's ``SparseCoder`` runs its own forward
(fused top-k encoder, sparse decoder, AuxK) with the loop body of ``sparsify.Trainer.fit``: decoder
renormalised before each step, parallel gradient removed, ``b_dec`` initialised to the first
batch's mean; optimiser Adam with sparsify's learning rate rule scaled like ours, and (second
line) sparsify's default SignSGD + schedule-free. Printed: tokens/s of each, the ratio, and held-out
FVE after the same number of tokens. Both start from the same weights (sparsify's ``nn.Linear``
init from seed 0 is conceptkit's seed-0 init), so with Adam the two follow the same trajectory up
to float rounding (also a test: ``tests/test_sae_train.py``) and the comparison is pure speed.
"""

from __future__ import annotations

import math
import time

import torch

D_SAE, K, BATCH, EPOCHS = 4608, 64, 512, 1
TRAIN_TOKENS, HELD_TOKENS = 40_960, 16_384


def activations() -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    from conceptkit.models import cache_dir
    from conceptkit.sae import corpus as C
    from conceptkit.sae.evaluate import site_rows

    path = cache_dir() / "sae" / f"bench-acts-{C.installation_key()}-{TRAIN_TOKENS}-{HELD_TOKENS}.safetensors"
    if path.exists():
        t = load_file(str(path))
        return t["train"], t["held"]
    import conceptkit as ck

    model = ck.load_model("smollm2-135m", backend="transformers")
    corpus = C.build()
    out = {}
    for name, split, n in (("train", "train", TRAIN_TOKENS), ("held", "held_out", HELD_TOKENS)):
        w = C.token_windows(corpus, model.tokenizer, split, 128, max_tokens=n)
        out[name] = torch.cat(list(site_rows(model, w, "blocks.12.hook_resid_post"))).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return out["train"], out["held"]


def fve(encode_decode, held: torch.Tensor) -> float:
    with torch.no_grad():
        recons = torch.cat([encode_decode(p) for p in held.split(2048)])
    return float(1 - (held - recons).pow(2).sum() / (held - held.mean(0)).pow(2).sum())


def batches(train: torch.Tensor) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(EPOCHS):
        rows = train[torch.randperm(train.shape[0], generator=g)]
        out += [rows[i : i + BATCH] for i in range(0, rows.shape[0] - BATCH + 1, BATCH)]
    return out


def ours(data: list[torch.Tensor], d_in: int) -> tuple[float, object]:
    from conceptkit.sae.train import TopKTrainer, TrainConfig

    trainer = TopKTrainer(d_in, TrainConfig(d_sae=D_SAE, k=K, batch_size=BATCH, dead_tokens=100_000, seed=0))
    start = time.perf_counter()
    for x in data:
        trainer.train_step(x)
    seconds = time.perf_counter() - start
    sae = trainer.sae()
    return seconds, sae.forward


def sparsify_run(data: list[torch.Tensor], d_in: int, optimizer: str) -> tuple[float, object]:
    import os

    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu", dtype=torch.float32)
    lr_scale = 4.0  # the same multiple of sparsify's own rule that conceptkit's default uses
    if optimizer == "adam":
        lr = lr_scale * 2e-4 / math.sqrt(D_SAE / 2**14)
        opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
        warm = 50
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=5e-3 / math.sqrt(D_SAE / 2**14)), momentum=0.95)
        opt.train()
        sched = None
    since_fired = torch.zeros(D_SAE, dtype=torch.long)
    start = time.perf_counter()
    for step, x in enumerate(data):
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > 100_000)
        (out.fvu + (1 / 32) * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        fired = torch.zeros(D_SAE, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        since_fired += x.shape[0]
        since_fired[fired] = 0
    seconds = time.perf_counter() - start
    if optimizer != "adam":
        opt.eval()
    sae.set_decoder_norm_to_unit_norm()
    return seconds, lambda p: sae(p).sae_out


def main() -> None:
    threads = torch.get_num_threads()
    train, held = activations()
    d_in = train.shape[1]
    data = batches(train)
    tokens = sum(x.shape[0] for x in data)
    print(f"{tokens} training rows ({EPOCHS} epochs of {train.shape[0]}), {held.shape[0]} held-out rows, "
          f"d_sae {D_SAE}, k {K}, batch {BATCH}, {threads} torch threads")
    results = {}
    for name, fn in (("conceptkit TopKTrainer", lambda: ours(data, d_in)),
                     ("sparsify (Adam)", lambda: sparsify_run(data, d_in, "adam")),
                     ("sparsify (default SignSGD+schedule-free)", lambda: sparsify_run(data, d_in, "signum"))):
        seconds, forward = fn()
        results[name] = (tokens / seconds, fve(forward, held))
        print(f"  {name:<44} {tokens / seconds:9.0f} tokens/s   held-out FVE {results[name][1]:.5f}", flush=True)
    ck_rate, ck_fve = results["conceptkit TopKTrainer"]
    for peer in ("sparsify (Adam)", "sparsify (default SignSGD+schedule-free)"):
        rate, peer_fve = results[peer]
        print(f"  conceptkit / {peer}: speed x{ck_rate / rate:.2f}, FVE difference {ck_fve - peer_fve:+.4f}")


if __name__ == "__main__":
    main()
