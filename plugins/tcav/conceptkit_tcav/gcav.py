"""GCAV / TGCAV (arXiv 2508.21197; spec ``methods/tcav.md`` section 11): one global CAV per run.

Per-layer CAVs of one concept disagree across layers. GCAV maps each layer's CAVs into a shared
space (``dim_align``), aligns the same concept across layers with InfoNCE (``align``), and fuses
the aligned CAVs of a run into one global CAV with an attention module trained to make the
per-layer TCAV scores agree while staying close to the per-layer CAVs (``fuse``). TGCAV decodes
the global CAV back into each layer and scores it there like an ordinary CAV.

LLM adaptation (design choices, as the spec allows): every residual site has width ``d_model``,
so ``dim_align="identity"`` (``E_l(v) = v / |v|``, ``D_l(z) = z``) is the default; gradients are
precomputed once per layer; the sign convention is TCAV's ``gradient_of``. Two further choices,
for CPU budgets and stable short training: the fusion's output layer starts at zero on top of the
mean of the aligned CAVs (so training starts from ``mean`` fusion, not from noise), and the
positional embedding starts small (0.02 · randn). The reference's hidden widths (4096) are
replaced by ``2 · embed``.

Degenerate cases (tested): ``identity`` + ``align=False`` + ``fuse="none"`` reproduces plain
TCAV's scores exactly; ``fuse="mean"`` of identical embeddings returns that embedding;
``fuse="none"`` with autoencoders scores the AE-reconstructed CAVs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from conceptkit_tcav.scores import compute_statistics


@dataclass
class TGCAVOutput:
    tcav_scores: torch.Tensor  # [L, N] per-layer, per-run scores of the original CAVs
    tgcav_scores: torch.Tensor  # [L, N] scores of the decoded global CAVs
    reconstructed: list[torch.Tensor]  # per layer [N, d_l]: D_l(g_i)
    global_cavs: torch.Tensor  # [N, e]
    #: per layer, mean over runs of the midpoint-rule accuracy separating concept from random
    #: activations: of the layer's own CAVs and of the decoded global CAVs (None: no activations given)
    accuracy_tcav: list[float] | None = None
    accuracy_tgcav: list[float] | None = None

    def statistics(self) -> dict[str, dict[str, float]]:
        """Mean / Std / CV / RR of the per-layer mean scores, for TCAV and TGCAV."""
        return {
            "tcav": compute_statistics(self.tcav_scores.mean(1).tolist()),
            "tgcav": compute_statistics(self.tgcav_scores.mean(1).tolist()),
        }


def sign_scores(G: torch.Tensor, cavs: torch.Tensor, count_negative: bool = False) -> torch.Tensor:
    """TCAV sign score of each CAV ``[N, d]`` over gradients ``G [K, d]`` -> ``[N]``."""
    S = G.double() @ cavs.double().T
    return ((S < 0) if count_negative else (S > 0)).double().mean(0)


# -- dimension alignment ---------------------------------------------------------------------------
class IdentityCoder(nn.Module):
    """``E(v) = v / |v|``, ``D(z) = z`` (all sites share the residual stream's basis)."""

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v, dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class AutoEncoder(nn.Module):
    """``E = Linear(d, h) -> ReLU -> Dropout -> Linear(h, e)``; ``D`` mirrored; loss ``1 - cos``."""

    def __init__(self, d: int, e: int, hidden: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, e))
        self.dec = nn.Sequential(nn.Linear(e, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d))

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        return self.enc(v)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def train_autoencoder(cavs: torch.Tensor, e: int, *, epochs: int = 30, copies: int = 10, seed: int = 0) -> AutoEncoder:
    """Fit one layer's autoencoder on its CAVs plus ``copies`` noisy copies of each (noise std
    ``0.1 * std(v)``, as the reference), Adam 1e-3, batch 16."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    v = cavs.float()
    data = torch.cat([v] + [v + 0.1 * v.std(1, keepdim=True) * torch.randn(v.shape, generator=g) for _ in range(copies)])
    ae = AutoEncoder(v.shape[1], e, 2 * e)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=g).split(16):
            batch = data[idx]
            loss = 1 - F.cosine_similarity(ae.decode(ae.encode(batch)), batch, dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ae.eval()


# -- cross-layer alignment -------------------------------------------------------------------------
class Projector(nn.Module):
    """``P(x) = normalize(x + MLP(x))``; the MLP's last layer starts at zero (P starts as identity)."""

    def __init__(self, e: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(e, 2 * e), nn.LayerNorm(2 * e), nn.GELU(), nn.Dropout(0.1), nn.Linear(2 * e, e))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.mlp(x), dim=-1)


def info_nce(za: torch.Tensor, zp: torch.Tensor, zn: torch.Tensor, tau: float) -> torch.Tensor:
    """``-mean log(e^{cos(a,p)/τ} / (e^{cos(a,p)/τ} + Σ_n e^{cos(a,n)/τ}))``; ``zn [B, M, e]``."""
    pos = F.cosine_similarity(za, zp, dim=-1)[:, None] / tau
    neg = F.cosine_similarity(za[:, None], zn, dim=-1) / tau
    return -(pos[:, 0] - torch.logsumexp(torch.cat([pos, neg], 1), 1)).mean()


def align(codes: torch.Tensor, negatives: torch.Tensor, *, epochs: int, tau: float, seed: int) -> torch.Tensor:
    """InfoNCE alignment of concept codes ``[L, N, e]`` across layers, with each layer's
    random-random codes ``[L, M, e]`` as negatives; the positive of layer ``l`` is a random run
    at the mirror layer ``L-1-l`` (as the reference). Loss ``L_NCE + 3 L_con``, AdamW 1e-3."""
    L, N, e = codes.shape
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proj = Projector(e)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-3, weight_decay=0.01)
    layer = torch.arange(L).repeat_interleave(N)
    run = torch.arange(N).repeat(L)
    for _ in range(epochs):
        partner = torch.randint(0, N, (L * N,), generator=g)
        xa, xp = codes[layer, run], codes[L - 1 - layer, partner]
        za, zp, zn = proj(xa), proj(xp), proj(negatives[layer])
        con = (1 - F.cosine_similarity(za, xa, dim=-1)).mean() + (1 - F.cosine_similarity(zp, xp, dim=-1)).mean()
        loss = info_nce(za, zp, zn, tau) + 3 * con
        opt.zero_grad()
        loss.backward()
        opt.step()
    proj.eval()
    with torch.no_grad():
        return proj(codes)


# -- fusion ----------------------------------------------------------------------------------------
class Fusion(nn.Module):
    """Transformer fusion of one run's ``L`` aligned CAVs into one vector: learnable positions,
    one post-LN encoder layer (4 heads, ff 256), mean pool, and an output layer added to the
    mean of the inputs (zero at start)."""

    def __init__(self, e: int, L: int, heads: int = 4) -> None:
        super().__init__()
        while e % heads:
            heads -= 1
        self.pe = nn.Parameter(0.02 * torch.randn(L, e))
        self.block = nn.TransformerEncoderLayer(e, heads, dim_feedforward=256, dropout=0.1, batch_first=True)
        self.out = nn.Linear(e, e)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # [B, L, e] -> [B, e]
        return X.mean(1) + self.out(self.block(X + self.pe).mean(1))


def separation_accuracy(pos: torch.Tensor, neg: torch.Tensor, cavs: torch.Tensor, soft_scale: float = 0.0) -> torch.Tensor:
    """How well each direction ``cavs [B, d]`` separates concept activations ``pos [n1, d]`` from
    random ones ``neg [n0, d]``: the fraction on the right side of the midpoint between the two
    class means of the projections ``[B]``. With ``soft_scale > 0`` the value is straight-through:
    the hard fraction forward, the gradient of ``sigmoid(soft_scale · margin / pooled sd)``."""
    c = F.normalize(cavs, dim=-1)
    pp, pn = pos @ c.T, neg @ c.T  # [n1, B], [n0, B]
    mid = (pp.mean(0) + pn.mean(0)) / 2
    margins = torch.cat([pp - mid, mid - pn])  # positive when on the right side
    hard = (margins > 0).to(margins.dtype).mean(0)
    if soft_scale <= 0:
        return hard
    sd = torch.cat([pp - pp.mean(0), pn - pn.mean(0)]).pow(2).mean(0).sqrt().clamp_min(1e-12)
    soft = torch.sigmoid(soft_scale * margins / sd).mean(0)
    return hard + (soft - soft.detach())


def fuse(
    X: torch.Tensor, coders: list[Any], grads: list[torch.Tensor], *, count_negative: bool, epochs: int,
    var_weight: float, sim_weight: float, seed: int, separation: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    sep_weight: float = 0.0,
) -> torch.Tensor:
    """Train :class:`Fusion` on runs ``X [N, L, e]`` with ``var_weight · Var_l(TCAV_l) +
    sim_weight · mean_l (1 - cos(D_l(X_l), D_l(g)))``; ``TCAV_l`` is the straight-through sign
    score ``hard + (soft - soft.detach())`` with ``soft = sigmoid(±T cos(γ, D_l(g)))`` and ``T``
    growing x1.2 per loss call up to 1000 (as the reference). Adam 5e-4, batch 4.

    Non-degeneracy (not in the reference; ``sep_weight > 0`` with ``separation`` = per-layer
    (concept, random) activations): ``+ sep_weight · mean_l relu(acc_l(X_l) - acc_l(D_l(g)))``, so
    the decoded global CAV must separate the concept from random examples at every layer as well
    as that run's own layer CAV does. Without it the variance term is minimised by any direction
    whose scores are equal across layers, e.g. one that scores 0 everywhere and carries no concept
    (seen on SmolLM2). The term is 0 whenever the constraint holds, so it changes nothing then."""
    N, L, e = X.shape
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Fusion(e, L)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    sign = -1.0 if count_negative else 1.0
    unit_grads = [F.normalize(G.float(), dim=-1) for G in grads]
    with torch.no_grad():
        targets = [coders[l].decode(X[:, l]) for l in range(L)]
    use_sep = separation is not None and sep_weight > 0
    if use_sep:
        sep = [(p.float(), n.float()) for p, n in separation]  # type: ignore[union-attr]
        with torch.no_grad():
            ref = [separation_accuracy(*sep[l], targets[l].float()) for l in range(L)]  # [N] per layer
    T = 1.0
    for _ in range(epochs):
        for idx in torch.randperm(N, generator=g).split(4):
            out = model(X[idx])
            scores, sim = [], 0.0
            for l in range(L):
                c_hat = coders[l].decode(out)
                s = sign * (unit_grads[l] @ F.normalize(c_hat, dim=-1).T)  # [K, B]
                soft = torch.sigmoid(T * s)
                hard = (s > 0).float()
                scores.append((hard + (soft - soft.detach())).mean(0))
                sim = sim + (1 - F.cosine_similarity(targets[l][idx], c_hat, dim=-1)).mean()
            per_layer = torch.stack(scores)  # [L, B]
            loss = var_weight * per_layer.var(0, unbiased=True).mean() + sim_weight * sim / L
            if use_sep:
                shortfall = sum(F.relu(ref[l][idx] - separation_accuracy(*sep[l], coders[l].decode(out), soft_scale=4.0)).mean() for l in range(L))
                loss = loss + sep_weight * shortfall / L
            T = min(T * 1.2, 1000.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return model(X)


def tgcav(
    cavs: list[torch.Tensor], random_cavs: list[torch.Tensor] | None, grads: list[torch.Tensor], *,
    dim_align: str = "identity", do_align: bool = True, fuse_mode: str = "attention", embed_dim: int = 256,
    align_epochs: int = 200, fuse_epochs: int = 30, var_weight: float = 3.0, sim_weight: float = 1.0,
    tau: float = 0.1, seed: int = 0, count_negative: bool = False,
    separation: list[tuple[torch.Tensor, torch.Tensor]] | None = None, sep_weight: float = 0.0,
) -> TGCAVOutput:
    """GCAV + TGCAV for one concept: per-layer CAVs ``cavs[l] [N, d_l]`` (run ``i`` at every layer
    uses the same random set), random-random CAVs ``random_cavs[l] [M, d_l]`` (InfoNCE negatives;
    needed when ``do_align``), gradients ``grads[l] [K, d_l]``."""
    L = len(cavs)
    with torch.no_grad():
        tcav_scores = torch.stack([sign_scores(grads[l], cavs[l], count_negative) for l in range(L)])
    if dim_align == "identity":
        if len({c.shape[1] for c in cavs}) != 1:
            from conceptkit.api import InputError

            raise InputError(f"dim_align='identity' needs equal widths at every site, got {[c.shape[1] for c in cavs]}")
        coders: list[Any] = [IdentityCoder() for _ in range(L)]
    else:
        coders = [train_autoencoder(torch.cat([cavs[l]] + ([random_cavs[l]] if random_cavs else [])), embed_dim, seed=seed + l) for l in range(L)]
    with torch.no_grad():
        codes = torch.stack([coders[l].encode(cavs[l].float()) for l in range(L)])  # [L, N, e]
        negatives = torch.stack([coders[l].encode(random_cavs[l].float()) for l in range(L)]) if random_cavs else None
    if do_align:
        if negatives is None:
            from conceptkit.api import InputError

            raise InputError("cross-layer alignment needs random-random CAVs as negatives")
        aligned = align(codes, negatives, epochs=align_epochs, tau=tau, seed=seed)
    else:
        aligned = codes
    X = aligned.transpose(0, 1)  # [N, L, e]
    if fuse_mode == "none":
        with torch.no_grad():
            rec = [coders[l].decode(aligned[l]).double() for l in range(L)]
        glob = aligned.mean(0)
    else:
        if fuse_mode == "mean":
            glob = X.mean(1)
        else:
            glob = fuse(X, coders, grads, count_negative=count_negative, epochs=fuse_epochs, var_weight=var_weight,
                        sim_weight=sim_weight, seed=seed, separation=separation, sep_weight=sep_weight)
        with torch.no_grad():
            rec = [coders[l].decode(glob).double() for l in range(L)]
    with torch.no_grad():
        tgcav_scores = torch.stack([sign_scores(grads[l], rec[l], count_negative) for l in range(L)])
    acc_t = acc_g = None
    if separation is not None:
        with torch.no_grad():
            acc_t = [float(separation_accuracy(p.double(), n.double(), cavs[l].double()).mean()) for l, (p, n) in enumerate(separation)]
            acc_g = [float(separation_accuracy(p.double(), n.double(), rec[l]).mean()) for l, (p, n) in enumerate(separation)]
    return TGCAVOutput(tcav_scores, tgcav_scores, rec, glob.detach(), acc_t, acc_g)
