"""A seeded, streaming TopK SAE trainer with the AuxK loss against dead latents.

The recipe is Gao et al. (2024, "Scaling and evaluating sparse autoencoders") as EleutherAI's
sparsify implements it: encoder ``relu(top_k((x - b_dec) @ W_enc + b_enc))``, unit-norm decoder
rows (renormalised after every step, the gradient's component parallel to each row removed
before it), ``b_dec`` initialised to the mean of the first batch, ``W_dec = W_enc.T``
initially, loss = FVU (squared error over the batch's total variance) + ``auxk_alpha`` x the
AuxK loss: the ``d_in // 2`` most active *dead* latents (not fired for ``dead_tokens`` tokens)
reconstruct the residual of the live ones. Adam with a linear warm-up.

Only the ``k`` chosen latents of each row get gradients, so the backward pass is sparse (sparse-dense
products and one ``embedding_bag``); the dense encoder product and one dense product for the
chosen latents' gradients are the only ``d_sae``-wide costs. Everything random is drawn from generators seeded by ``seed``, so the
same stream and config give bit-identical weights, and a run resumed from a checkpoint equals
the run that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import torch
from safetensors.torch import load_file, save_file

from conceptkit.errors import InputError
from conceptkit.sae.base import SAE


class TrainConfig(pydantic.BaseModel):
    """Training settings (all recorded in the SAE's provenance)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    d_sae: int = pydantic.Field(4608, ge=1)
    k: int = pydantic.Field(32, ge=1)
    lr: float | None = pydantic.Field(None, description="Adam learning rate; default 2e-4 / sqrt(d_sae / 2^14) x lr_scale")
    lr_scale: float = 4.0
    lr_warmup_steps: int = 50
    batch_size: int = pydantic.Field(1024, ge=1, description="tokens per step")
    auxk_alpha: float = 1 / 32
    dead_tokens: int = pydantic.Field(100_000, ge=1, description="a latent not fired for this many tokens is dead (AuxK)")
    seed: int = 0
    shuffle_buffer: int = pydantic.Field(65_536, ge=0, description="rows shuffled together (0: keep stream order)")
    checkpoint_every: int = pydantic.Field(0, ge=0, description="steps between checkpoints (0: none)")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.lr_scale * 2e-4 / math.sqrt(self.d_sae / 2**14)


def _by_latent(idx: torch.Tensor, values: torch.Tensor, n_latents: int) -> torch.Tensor:
    """The sparse ``[n_latents, B]`` matrix with ``values[b, j]`` at ``(idx[b, j], b)``."""
    rows = idx.reshape(-1)
    cols = torch.arange(idx.shape[0]).repeat_interleave(idx.shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values.reshape(-1), (n_latents, idx.shape[0]),
                                   check_invariants=False)


class _SparseCode(torch.autograd.Function):
    """``sum_j relu(h[b, idx_j]) W_dec[idx_j]`` for pre-activations ``h = xc @ W_enc + b_enc``
    gathered at ``idx`` (computed without grad), with a backward that touches only those latents.

    On CPU the generic paths are slow (``embedding_bag``'s weight gradient, ``index_add`` of
    ``[B, k, d]`` products); here the weight gradients are sparse-dense products and the
    gradient of the input is one ``embedding_bag`` over the row-major encoder.
    """

    @staticmethod
    def forward(ctx: Any, xc: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                idx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a = torch.relu(h)
        ctx.save_for_backward(xc, W_encT, W_dec, idx, a)
        return torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=a, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        xc, W_encT, W_dec, idx, a = ctx.saved_tensors
        n_latents = W_dec.shape[0]
        grad_a = (grad_out @ W_dec.T).gather(1, idx)
        grad_h = grad_a * (a > 0).to(grad_a.dtype)
        grad_W_dec = torch.sparse.mm(_by_latent(idx, a, n_latents), grad_out) if ctx.needs_input_grad[3] else None
        grad_W_encT = torch.sparse.mm(_by_latent(idx, grad_h, n_latents), xc) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(n_latents, dtype=grad_h.dtype).index_add_(0, idx.reshape(-1), grad_h.reshape(-1)) if ctx.needs_input_grad[2] else None
        grad_x = torch.nn.functional.embedding_bag(idx, W_encT, per_sample_weights=grad_h, mode="sum") if ctx.needs_input_grad[0] else None
        return grad_x, grad_W_encT, grad_b, grad_W_dec, None, None


def sparse_code(xc: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, idx: torch.Tensor,
                pre: torch.Tensor) -> torch.Tensor:
    """Decoded contribution of the latents ``idx`` (see :class:`_SparseCode`); ``pre`` is the dense
    pre-activation ``xc @ W_encT.T + b_enc`` computed without grad."""
    return _SparseCode.apply(xc, W_encT, b_enc, W_dec, idx, pre.gather(1, idx))  # type: ignore[no-any-return]


class TopKTrainer:
    """Train a TopK SAE on a stream of activation rows ``[n, d_in]``.

    ``fit(stream)`` consumes an iterable of tensors (any row counts), re-batched into
    ``batch_size`` rows after a seeded shuffle buffer. ``state()``/``from_checkpoint`` save
    and restore everything (weights, Adam moments, dead-latent counters, position in the stream).
    """

    def __init__(self, d_in: int, config: TrainConfig | None = None, **kwargs: Any) -> None:
        self.config = cfg = config or TrainConfig(**kwargs)
        if cfg.k > cfg.d_sae:
            raise InputError(f"k={cfg.k} exceeds d_sae={cfg.d_sae}")
        self.d_in = d_in
        g = torch.Generator().manual_seed(cfg.seed)
        bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, as in sparsify
        # the encoder is kept row-major, [d_sae, d_in] (nn.Linear's layout): its rows are gathered
        W_encT = (torch.rand(cfg.d_sae, d_in, generator=g) * 2 - 1) * bound
        self.W_encT = W_encT.requires_grad_(True)
        self.b_enc = torch.zeros(cfg.d_sae, requires_grad=True)
        W_dec = W_encT.detach().clone()
        self.W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)).requires_grad_(True)
        self.b_dec = torch.zeros(d_in, requires_grad=True)
        self.params = [self.W_encT, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=cfg.learning_rate(), betas=(0.9, 0.999), eps=6.25e-10)
        self.step = 0
        self.rows_seen = 0
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.history: list[dict[str, float]] = []

    # -- one step ------------------------------------------------------------------------------------
    def _lr(self) -> float:
        warm = self.config.lr_warmup_steps
        return self.config.learning_rate() * min(1.0, (self.step + 1) / warm) if warm else self.config.learning_rate()

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        x = x.float()
        if self.step == 0:
            with torch.no_grad():
                self.b_dec.copy_(x.mean(0))
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        xc = x - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, xc, self.W_encT.T)
            top = pre.topk(cfg.k, dim=1, sorted=False)
        recons = sparse_code(xc, self.W_encT, self.b_enc, self.W_dec, top.indices, pre) + self.b_dec
        err = x - recons
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        dead = self.since_fired > cfg.dead_tokens
        n_dead = int(dead.sum())
        aux = torch.zeros(())
        if cfg.auxk_alpha > 0 and n_dead > 0:
            k_aux = min(self.d_in // 2, n_dead)
            scale = min(n_dead / (self.d_in // 2), 1.0)
            with torch.no_grad():
                aux_idx = torch.where(dead, pre, torch.tensor(-torch.inf)).topk(k_aux, dim=1, sorted=False).indices
            e_hat = sparse_code(xc, self.W_encT, self.b_enc, self.W_dec, aux_idx, pre)
            aux = scale * (e_hat - err.detach()).pow(2).sum() / total_var
            loss = loss + cfg.auxk_alpha * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, G = self.W_dec, self.W_dec.grad
            G -= (G * W).sum(1, keepdim=True) * W  # keep the update tangent to the unit sphere
            self.opt.step()
            W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
            fired[top.indices[top.values > 0]] = True
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
        self.step += 1
        self.rows_seen += x.shape[0]
        stats = {"fvu": float(fvu.detach()), "auxk": float(aux.detach()), "dead_fraction": n_dead / cfg.d_sae}
        return stats

    # -- streams ---------------------------------------------------------------------------------------------
    def batches(self, stream: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The stream re-cut into ``batch_size`` rows after a seeded shuffle buffer (deterministic)."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed + 1)
        buffer: list[torch.Tensor] = []
        held = 0
        target = max(cfg.shuffle_buffer, cfg.batch_size)

        def drain(final: bool) -> Iterator[torch.Tensor]:
            nonlocal buffer, held
            rows = torch.cat(buffer) if buffer else torch.empty(0, self.d_in)
            if cfg.shuffle_buffer:
                rows = rows[torch.randperm(rows.shape[0], generator=g)]
            n_full = rows.shape[0] // cfg.batch_size
            for i in range(n_full):
                yield rows[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            rest = rows[n_full * cfg.batch_size :]
            buffer, held = ([rest] if rest.shape[0] and not final else []), rest.shape[0] if not final else 0

        for chunk in stream:
            if chunk.dim() != 2 or chunk.shape[1] != self.d_in:
                raise InputError(f"training rows must be [n, {self.d_in}], got {tuple(chunk.shape)}")
            buffer.append(chunk.float())
            held += chunk.shape[0]
            if held >= target:
                yield from drain(final=False)
        yield from drain(final=True)

    def fit(
        self,
        stream: Iterable[torch.Tensor],
        *,
        max_steps: int | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        total_steps: int | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> SAE:
        """Train on ``stream``; resumes after the steps already taken (the stream is replayed)."""
        bar = _bar(progress, total_steps, self.step)
        start, skip = time.perf_counter(), self.step
        try:
            for i, batch in enumerate(self.batches(stream)):
                if i < skip:
                    continue  # already trained on (resumed run)
                if max_steps is not None and self.step >= max_steps:
                    break
                stats = self.train_step(batch)
                if self.step % 10 == 0 or self.step == 1:
                    self.history.append({"step": self.step, **stats})
                if on_step is not None:
                    on_step(self.step, stats)
                if bar is not None:
                    rate = (self.step - skip) * self.config.batch_size / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(fvu=f"{stats['fvu']:.3f}", dead=f"{stats['dead_fraction']:.1%}", tok_s=f"{rate:.0f}")
                    bar.update(1)
                if checkpoint_dir is not None and self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_dir)
        finally:
            if bar is not None:
                bar.close()
        return self.sae()

    def sae(self, **kwargs: Any) -> SAE:
        """The current weights as an inference :class:`SAE` (TopK, SAELens conventions)."""
        return SAE(
            self.W_encT.detach().T.contiguous(), self.b_enc.detach().clone(), self.W_dec.detach().clone(), self.b_dec.detach().clone(),
            architecture="topk", k=self.config.k, **kwargs,
        )

    # -- checkpoints (safetensors + JSON; no pickle) -----------------------------------------------------------
    def save_checkpoint(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = ["W_encT", "b_enc", "W_dec", "b_dec"]
        tensors = {f"param.{n}": p.detach().contiguous() for n, p in zip(names, self.params)}
        for n, p in zip(names, self.params):
            st = self.opt.state.get(p, {})
            if st:
                tensors[f"adam.{n}.exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"adam.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                tensors[f"adam.{n}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
        tensors["since_fired"] = self.since_fired.contiguous()
        tmp = folder / "checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        meta = {"d_in": self.d_in, "step": self.step, "rows_seen": self.rows_seen, "config": self.config.model_dump(),
                "history": self.history}
        (folder / "trainer.json.tmp").write_text(json.dumps(meta))
        tmp.replace(folder / "checkpoint.safetensors")
        (folder / "trainer.json.tmp").replace(folder / "trainer.json")
        return folder

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> "TopKTrainer":
        folder = Path(folder)
        meta = json.loads((folder / "trainer.json").read_text())
        trainer = cls(meta["d_in"], TrainConfig(**meta["config"]))
        tensors = load_file(str(folder / "checkpoint.safetensors"))
        names = ["W_encT", "b_enc", "W_dec", "b_dec"]
        with torch.no_grad():
            for n, p in zip(names, trainer.params):
                p.copy_(tensors[f"param.{n}"])
                if f"adam.{n}.exp_avg" in tensors:
                    trainer.opt.state[p] = {
                        "step": torch.tensor(float(tensors[f"adam.{n}.step"][0])),
                        "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                        "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone(),
                    }
        trainer.since_fired = tensors["since_fired"].clone()
        trainer.step, trainer.rows_seen, trainer.history = meta["step"], meta["rows_seen"], meta["history"]
        return trainer


def _bar(show: bool | None, total: int | None, initial: int) -> Any:
    import sys

    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training SAE", unit="step")
