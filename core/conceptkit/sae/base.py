"""The sparse-autoencoder type: ReLU, JumpReLU and TopK dictionaries with SAELens conventions.

Weights follow SAELens: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``. Encoding is

    sae_in   = norm_in(x)                                  (activation normalisation)
    hidden   = (sae_in - b_dec * apply_b_dec_to_input) @ W_enc + b_enc      ("acts_pre")
    acts     = act(hidden)                                                 ("acts_post")
    recons   = norm_out(acts @ W_dec + b_dec)

with ``act`` = ReLU (``standard``), ``relu(h) * (h > threshold)`` (``jumprelu``) or "keep the
``k`` largest, then ReLU" (``topk``, SAELens' order). A BatchTopK SAE is a JumpReLU SAE at
inference (SAELens saves it that way: one shared threshold).

The normalisations are SAELens' ``normalize_activations`` modes. ``constant_norm_rescale`` and
``layer_norm`` depend on the input row, so undoing them needs that row: :meth:`SAE.decode`
takes the input ``x`` (or the :class:`NormState` from :meth:`SAE.normalise`) for those modes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from conceptkit.errors import InputError

Architecture = Literal["standard", "jumprelu", "topk"]
NormMode = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
ARCHITECTURES: tuple[str, ...] = ("standard", "jumprelu", "topk")
NORM_MODES: tuple[str, ...] = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_ALIASES = {"relu": "standard", "jump_relu": "jumprelu", "batchtopk": "jumprelu"}


@dataclass
class NormState:
    """Per-row statistics of the input normalisation, needed to map a reconstruction back.

    ``norm_out(y) = y * scale + shift`` for every mode, so a change ``dy`` in normalised
    space is ``dy * scale`` in the site's space.
    """

    scale: torch.Tensor | float = 1.0  # broadcastable to [..., 1]
    shift: torch.Tensor | float = 0.0

    def out(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(self.scale, float) and self.scale == 1.0 and isinstance(self.shift, float) and self.shift == 0.0:
            return y
        return y * self.scale + self.shift


class SAE:
    """A sparse autoencoder's weights, its architecture and the site it reads.

    Build one from tensors (``SAE(W_enc=..., b_enc=..., W_dec=..., b_dec=..., architecture=...)``),
    load one with :meth:`SAE.load` (SAELens or EleutherAI sparsify folders) or from a store
    record (:func:`conceptkit.sae.from_record`), and save it with :meth:`save` (SAELens layout).
    """

    def __init__(
        self,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        *,
        architecture: str = "standard",
        threshold: torch.Tensor | None = None,
        k: int | None = None,
        site: str | None = None,
        model_name: str | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        norm_scaling_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        record_id: str | None = None,
    ) -> None:
        arch = _ALIASES.get(architecture, architecture)
        if arch not in ARCHITECTURES:
            raise InputError(f"unknown SAE architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
        if normalize_activations not in NORM_MODES:
            raise InputError(f"unknown normalize_activations {normalize_activations!r}; known: {', '.join(NORM_MODES)}")
        if W_enc.dim() != 2:
            raise InputError(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(W_enc.shape)}")
        d_in, d_sae = W_enc.shape
        expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        for name, tensor in (("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            if tuple(tensor.shape) != expected[name]:
                raise InputError(f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]} (from W_enc {tuple(W_enc.shape)})")
        if arch == "jumprelu":
            if threshold is None:
                raise InputError("a jumprelu SAE needs a threshold [d_sae]")
            threshold = torch.as_tensor(threshold, dtype=W_enc.dtype)
            if threshold.dim() == 0:
                threshold = threshold.expand(d_sae).clone()
            if tuple(threshold.shape) != (d_sae,):
                raise InputError(f"threshold has shape {tuple(threshold.shape)}, expected {(d_sae,)}")
        elif threshold is not None:
            raise InputError(f"a {arch} SAE has no threshold (only jumprelu does)")
        if arch == "topk":
            if k is None or not (1 <= int(k) <= d_sae):
                raise InputError(f"a topk SAE needs 1 <= k <= d_sae={d_sae}, got k={k!r}")
            k = int(k)
        elif k is not None:
            raise InputError(f"k is only meaningful for topk SAEs, not {arch}")
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = W_enc, b_enc, W_dec, b_dec
        self.threshold, self.k = threshold, k
        self.architecture: str = arch
        self.site, self.model_name = site, model_name
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations: str = normalize_activations
        self.norm_scaling_factor = norm_scaling_factor
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.record_id = record_id

    # -- shape and identity --------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights by their SAELens names (what a ``sae_weights.safetensors`` holds)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def config(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-safe data."""
        return {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "k": self.k,
            "site": self.site,
            "model_name": self.model_name,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "norm_scaling_factor": self.norm_scaling_factor,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def fingerprint(self) -> str:
        """sha256 over the weights and the config: equal fingerprints mean the same function."""
        h = hashlib.sha256()
        for name, t in sorted(self.tensors().items()):
            t = t.detach().cpu().contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        cfg = self.config()
        h.update(repr(sorted(cfg.items())).encode())
        return h.hexdigest()

    @property
    def ref(self) -> str:
        """How an intervention refers to this SAE: its record id, else ``sae:<fingerprint>``."""
        return self.record_id or f"sae:{self.fingerprint()[:24]}"

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "SAE":
        """A copy with weights in ``dtype`` / on ``device`` (same record id)."""
        conv = {n: t.to(device=device, dtype=dtype) for n, t in self.tensors().items()}
        return SAE(
            conv["W_enc"], conv["b_enc"], conv["W_dec"], conv["b_dec"], threshold=conv.get("threshold"), **self._kwargs()
        )

    def _kwargs(self) -> dict[str, Any]:
        return dict(
            architecture=self.architecture, k=self.k, site=self.site, model_name=self.model_name,
            apply_b_dec_to_input=self.apply_b_dec_to_input, normalize_activations=self.normalize_activations,
            norm_scaling_factor=self.norm_scaling_factor, metadata=self.metadata, record_id=self.record_id,
        )

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return f"SAE({self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{extra}, site={self.site!r})"

    # -- the computation ---------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise InputError(f"SAE {self.ref} reads width {self.d_in} but got activations of width {x.shape[-1]}")

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """``norm_in(x)`` and the state that undoes it (identity for ``none``)."""
        mode = self.normalize_activations
        if mode == "none" or (mode == "expected_average_only_in" and self.norm_scaling_factor is None):
            return x, NormState()
        if mode == "expected_average_only_in":
            s = float(self.norm_scaling_factor)  # type: ignore[arg-type]
            return x * s, NormState(scale=1.0 / s)
        if mode == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, NormState(scale=1.0 / coeff)
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + 1e-5), NormState(scale=std, shift=mu)

    def pre_acts(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Hidden pre-activations from the *normalised* input (SAELens ``hook_sae_acts_pre``)."""
        W_enc = self.W_enc.to(sae_in.device)
        centred = sae_in - self.b_dec.to(sae_in.device) if self.apply_b_dec_to_input else sae_in
        return centred @ W_enc + self.b_enc.to(sae_in.device)

    def activation(self, hidden: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity (SAELens ``hook_sae_acts_post``)."""
        if self.architecture == "standard":
            return torch.relu(hidden)
        if self.architecture == "jumprelu":
            thr = self.threshold.to(hidden.device)  # type: ignore[union-attr]
            return torch.relu(hidden) * (hidden > thr).to(hidden.dtype)
        top = torch.topk(hidden, self.k, dim=-1)  # type: ignore[arg-type]
        return torch.zeros_like(hidden).scatter_(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``x [..., d_in]``."""
        self._check(x)
        x = x.to(self.dtype)
        sae_in, _ = self.normalise(x)
        return self.activation(self.pre_acts(sae_in))

    def decode_normalised(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts @ W_dec + b_dec`` in normalised space (SAELens' ``hook_sae_recons`` tensor)."""
        return acts @ self.W_dec.to(acts.device) + self.b_dec.to(acts.device)

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None, state: NormState | None = None) -> torch.Tensor:
        """Reconstruction in the site's space. Input-dependent normalisations need ``x`` or ``state``."""
        if acts.shape[-1] != self.d_sae:
            raise InputError(f"SAE {self.ref} has {self.d_sae} latents but got acts of width {acts.shape[-1]}")
        if state is None:
            if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                if x is None:
                    raise InputError(
                        f"decoding with normalize_activations={self.normalize_activations!r} needs the input x "
                        "(or the NormState from SAE.normalise) to undo the per-row normalisation"
                    )
                state = self.normalise(x.to(self.dtype))[1]
            else:
                state = self.normalise(torch.zeros(1, self.d_in, dtype=self.dtype))[1]
        return state.out(self.decode_normalised(acts.to(self.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``decode(encode(x))``."""
        self._check(x)
        x = x.to(self.dtype)
        sae_in, state = self.normalise(x)
        return state.out(self.decode_normalised(self.activation(self.pre_acts(sae_in))))

    __call__ = forward

    def decoder_directions(self, normalise: bool = True) -> torch.Tensor:
        """Rows of ``W_dec`` (optionally unit norm): the latents' directions in the site's space."""
        W = self.W_dec.detach().float()
        return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalise else W

    # -- files -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str, **overrides: Any) -> "SAE":
        """Read a SAELens folder or an EleutherAI sparsify folder (detected by its files)."""
        from conceptkit.sae.formats import read_folder

        return read_folder(folder, **overrides)

    @classmethod
    def from_record(cls, store: Any, record_id: str) -> "SAE":
        """Load a stored SAE record (kind ``sae``)."""
        from conceptkit.sae.records import from_record

        return from_record(store, record_id)

    def save(self, folder: str, **extra_cfg: Any) -> Any:
        """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
        from conceptkit.sae.formats import write_saelens

        return write_saelens(self, folder, **extra_cfg)
