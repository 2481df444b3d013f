"""The diffusers backend: UNet cross-attention and text-encoder surfaces of a pipeline.

Text-to-image methods (UCE, TIME, ItD) work on two surfaces: the cross-attention key/value
projections of the UNet (``...attn2.to_k`` / ``to_v``, selected by name: hook_points.md §8) and
the text encoder's layers. Sites are raw module paths (``unet.<path>`` or
``text_encoder.<path>``). Weight edits are :class:`conceptkit.WeightEdit` objects with a raw
``param`` path (``unet.<...>.to_k.weight``), applied with ``model.apply_edit``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from conceptkit.backends import module_hooks
from conceptkit.backends.base import Model, ModelRef, SiteFn
from conceptkit.capabilities import Capability
from conceptkit.data import Batch
from conceptkit.errors import InputError
from conceptkit.handles import Handle


class DiffusersModel(Model):
    """A diffusers pipeline (or a bare ``UNet2DConditionModel``)."""

    backend_name: ClassVar[str] = "diffusers"
    capabilities = frozenset({Capability.GRADIENTS, Capability.WEIGHT_EDIT, Capability.PYTHON_HOOKS})

    def __init__(self, obj: Any, name: str | None = None, tokenizer: Any = None, **_: Any) -> None:
        self.pipeline = obj if hasattr(obj, "unet") else None
        self.unet = obj.unet if self.pipeline is not None else obj
        self.text_encoder = getattr(self.pipeline, "text_encoder", None)
        tok = tokenizer if tokenizer is not None else getattr(self.pipeline, "tokenizer", None)
        super().__init__(tok, name or type(obj).__name__)
        self._modules: dict[str, torch.nn.Module] = {f"unet.{n}": m for n, m in self.unet.named_modules() if n}
        if self.text_encoder is not None:
            self._modules.update({f"text_encoder.{n}": m for n, m in self.text_encoder.named_modules() if n})

    def sites(self) -> list[str]:
        """Cross-attention K/V projections, then the text encoder's layer outputs."""
        return self.cross_attention_sites() + self.text_encoder_sites()

    def text_encoder_sites(self) -> list[str]:
        """``text_encoder.<...>encoder.layers.<i>`` (transformers 5 drops the ``text_model``
        wrapper that transformers 4 had; both are found by suffix: hook_points.md §8)."""
        pattern = re.compile(r"^text_encoder\.(?:.*\.)?encoder\.layers\.\d+$")
        return [n for n in self._modules if pattern.match(n)]

    def _forward(self, batch: Batch) -> torch.Tensor:
        """Run the text encoder on token ids (the UNet needs latents and a timestep: call it directly)."""
        if self.text_encoder is None:
            raise InputError("this diffusers model has no text encoder to run; hook the UNet and call it directly")
        return self.text_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]

    def cross_attention_sites(self) -> list[str]:
        """``unet.<path>.attn2.to_k`` / ``to_v`` modules, in module order."""
        return [n for n in self._modules if ".attn2." in n and n.endswith(("to_k", "to_v"))]

    def _is_raw_site(self, site: str) -> bool:
        path, _, io = site.partition(":")
        return path in self._modules and io in ("", "input", "output")

    def _attach(self, site: str, fn: SiteFn) -> Handle:
        path, _, io = site.partition(":")
        return module_hooks.attach(self._modules[path], io or "output", fn)

    def cross_attention_projections(self) -> dict[str, torch.nn.Linear]:
        """The key/value projections that read the text embedding, by site name."""
        return {n: self._modules[n] for n in self.cross_attention_sites()}  # type: ignore[misc]

    def edit_projection(self, site: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Handle:
        """Replace a cross-attention projection weight by ``fn(W)`` through the parameter's edit
        ledger (:mod:`conceptkit.edits`); the handle removes exactly this change. Storable
        edits use ``model.apply_edit(ck.WeightEdit.dense(param=f"{site}.weight", ...))``."""
        if site not in self.cross_attention_sites():
            from conceptkit.sites import unknown_site

            raise unknown_site(site, self.cross_attention_sites())
        from conceptkit.edits import edit_op

        return edit_op(self._modules[site].weight, fn, repr(site))

    def find_parameter(self, path: str) -> torch.nn.Parameter:
        """A parameter by path: ``unet.<module path>.weight`` or ``text_encoder.<...>``."""
        module_path, _, name = path.rpartition(".")
        module = self._modules.get(module_path)
        param = getattr(module, name, None) if module is not None else None
        if not isinstance(param, torch.nn.Parameter):
            from conceptkit.errors import UnknownNameError

            names = [f"{m}.{n}" for m in self.cross_attention_sites() for n, _ in self._modules[m].named_parameters()]
            raise UnknownNameError("parameter", path, names)
        return param

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder embeddings ``[N, T, d]`` as the pipeline feeds them to the UNet."""
        if self.pipeline is None:
            raise InputError("a bare UNet has no text encoder; pass embeddings directly")
        with torch.no_grad():
            return self.pipeline.encode_prompt(prompts, self.unet.device, 1, do_classifier_free_guidance=False)[0]

    @property
    def d_model(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def n_layers(self) -> int:
        return 0

    @property
    def ref(self) -> ModelRef:
        from conceptkit.backends.hf import weights_hash
        from conceptkit._dist import dist_version

        return ModelRef(
            name=self.name,
            weights_hash=weights_hash(self.unet),
            backend=self.backend_name,
            backend_version=dist_version("diffusers"),
            dtype=str(next(self.unet.parameters()).dtype).removeprefix("torch."),
            architecture=type(self.unet).__name__,
        )

    def hook_registry(self) -> list[tuple[str, str, int]]:
        entries = module_hooks.hook_registry(self.unet, "unet.")
        if self.text_encoder is not None:
            entries += module_hooks.hook_registry(self.text_encoder, "text_encoder.")
        return entries


class DiffusersBackend:
    def recognises(self, obj: Any) -> bool:
        import sys

        if "diffusers" not in sys.modules:
            return False
        from diffusers import DiffusionPipeline, UNet2DConditionModel

        return isinstance(obj, (DiffusionPipeline, UNet2DConditionModel))

    def wrap(self, obj: Any, **kwargs: Any) -> Model:
        return DiffusersModel(obj, **kwargs)
