"""How good an SAE is at its site: variance explained, sparsity, dead latents, loss recovered.

* ``fve``: fraction of variance explained on held-out rows, ``1 - sum |x - x^|^2 / sum |x - mean|^2``
  (one mean over all rows, the usual definition);
* ``l0``: mean number of non-zero latents per row;
* ``dead_fraction``: latents that never fire on the evaluated rows;
* ``ce_recovered``: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, next-token cross-entropy with
  the site replaced by the SAE reconstruction (``CE_sae``), by zeros (``CE_zero``) and left alone.

Attention-sink rows are left out everywhere (and left untouched in the CE runs): rows at
positions below ``skip_first``, and rows whose norm exceeds ``max_norm_ratio`` (10) times the
median row norm of their forward pass. SmolLM2 puts a "massive activation" (norm ~24,000 against
a median of ~145 at layer 12) on the first token of a sequence and, in about one window in 4,000,
on the second; in 16k held-out rows 4 such rows carry 90% of the variance, so without this rule
the FVE would measure those few rows (the counterpart of SAELens leaving out BOS).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from conceptkit.interventions import Intervention
from conceptkit.sae.base import SAE


def site_rows(
    model: Any,
    inputs: dict[str, torch.Tensor],
    site: str,
    *,
    skip_first: int = 1,
    max_norm_ratio: float | None = 10.0,
    chunk: int = 64,
    batch_size: int = 16,
    progress: Any = None,
) -> Iterator[torch.Tensor]:
    """Activation rows ``[n, d]`` at ``site`` for every real token at position >= ``skip_first``
    that is not an attention sink (norm <= ``max_norm_ratio`` x the chunk's median row norm),
    captured ``chunk`` windows at a time (so memory stays flat)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for start in range(0, ids.shape[0], chunk):
        part = {"input_ids": ids[start : start + chunk], "attention_mask": mask[start : start + chunk]}
        acts = model.capture(part, [site], reduce="all", batch_size=batch_size, progress=False)
        if progress is not None:
            progress(int(part["attention_mask"].sum()))
        yield kept_rows(acts[site], acts.token_index, skip_first=skip_first, max_norm_ratio=max_norm_ratio)


def kept_rows(rows: torch.Tensor, index: torch.Tensor, *, skip_first: int = 1,
              max_norm_ratio: float | None = 10.0) -> torch.Tensor:
    """The rows of one chunk that :func:`site_rows` keeps (``index``: the capture's
    ``token_index``; the norm limit is relative to this chunk's median), as float32."""
    keep = index[:, 1] >= skip_first
    if max_norm_ratio is not None:
        norms = rows.float().norm(dim=-1)
        keep &= norms <= max_norm_ratio * norms[keep].median()
    return rows[keep].float()


def reconstruction_stats(sae: SAE, rows: Iterable[torch.Tensor]) -> dict[str, Any]:
    """FVE, MSE, L0 and dead latents over a stream of rows."""
    n = 0
    sse = 0.0
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = torch.zeros(sae.d_in, dtype=torch.float64)
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    with torch.inference_mode():
        for x in rows:
            for part in x.split(4096):
                acts = sae.encode(part)
                recons = sae.decode(acts, x=part)
                sse += float((part - recons).double().pow(2).sum())
                s1 += part.double().sum(0)
                s2 += part.double().pow(2).sum(0)
                nz = acts > 0
                l0 += float(nz.sum())
                fired |= nz.any(0)
                n += part.shape[0]
    total_var = float((s2 - s1.pow(2) / max(n, 1)).sum())
    return {
        "fve": 1 - sse / total_var if total_var > 0 else float("nan"),
        "mse": sse / max(n, 1) / sae.d_in,
        "l0": l0 / max(n, 1),
        "dead_fraction": float((~fired).float().mean()),
        "dead_latents": int((~fired).sum()),
        "n_tokens": n,
    }


class _SpliceRows(Intervention):
    """Replace non-sink rows by the SAE's reconstruction (``sae``) or by zeros (``sae=None``)."""

    op: str = "sae_eval_splice"
    sae: Any = None
    max_norm_ratio: float | None = 10.0

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        new = torch.zeros_like(x) if self.sae is None else self.sae.forward(x).to(x.dtype)
        if self.max_norm_ratio is None:
            return new
        norms = x.float().norm(dim=-1, keepdim=True)
        sink = norms > self.max_norm_ratio * norms.flatten().median()
        return torch.where(sink, x, new)


def ce_recovered(model: Any, sae: SAE, inputs: dict[str, torch.Tensor], site: str | None = None, *, skip_first: int = 1,
                 max_norm_ratio: float | None = 10.0, batch_size: int = 8) -> dict[str, float]:
    """Cross-entropy with the site clean, with its rows replaced by the reconstruction, and zeroed
    (the same rows in both: position >= ``skip_first``, attention sinks left alone)."""
    site = site or sae.site
    T = inputs["input_ids"].shape[1]
    positions = list(range(skip_first, T))

    def ce(interventions: list[Any]) -> float:
        nll, count = model.nll(inputs, interventions, batch_size=batch_size)
        return float(nll.sum() / count.sum())

    clean = ce([])
    zero = ce([_SpliceRows(site=site, positions=positions, sae=None, max_norm_ratio=max_norm_ratio)])
    spliced = ce([_SpliceRows(site=site, positions=positions, sae=sae, max_norm_ratio=max_norm_ratio)])
    return {
        "ce_clean": clean,
        "ce_sae": spliced,
        "ce_zero": zero,
        "ce_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        "ce_tokens": int((inputs["attention_mask"][:, 1:]).sum()),
    }


def evaluate(
    sae: SAE,
    model: Any,
    *,
    held_out: dict[str, torch.Tensor],
    ce_inputs: dict[str, torch.Tensor] | None = None,
    site: str | None = None,
    skip_first: int = 1,
    progress: bool | None = None,
) -> dict[str, Any]:
    """All figures on held-out windows (see the module docstring)."""
    site = site or sae.site
    if site is None:
        from conceptkit.errors import InputError

        raise InputError(f"{sae!r} does not say which site it reads; pass site=")
    total = int(held_out["attention_mask"].sum())
    bar = _bar(progress, total, "evaluating SAE")
    try:
        rows = site_rows(model, held_out, site, skip_first=skip_first, progress=bar.update if bar else None)
        out = reconstruction_stats(sae, rows)
    finally:
        if bar is not None:
            bar.close()
    if ce_inputs is not None:
        out.update(ce_recovered(model, sae, ce_inputs, site, skip_first=skip_first))
    out["skip_first"] = skip_first
    return out


def _bar(show: bool | None, total: int, desc: str) -> Any:
    import sys

    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True)
