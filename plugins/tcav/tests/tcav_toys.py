"""A toy backend for exact TCAV identities: inputs are keys of a table of fixed vectors."""

from __future__ import annotations

import torch

import conceptkit as ck
from conceptkit.backends import module_hooks
from conceptkit.data import Batch


class Net(torch.nn.Module):
    """``pre`` -> site -> ``post``; the site is an identity module whose output we hook."""

    def __init__(self, pre: torch.nn.Module, post: torch.nn.Module) -> None:
        super().__init__()
        self.pre, self.site, self.post = pre, torch.nn.Identity(), post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.site(self.pre(x)))


class VectorModel(ck.Model):
    """A conceptkit Model over a plain torch net whose inputs are looked up by string key."""

    backend_name = "toy"
    capabilities = frozenset({ck.Capability.GRADIENTS})
    SITE = "blocks.0.hook_resid_post"

    def __init__(self, net: Net, table: dict[str, torch.Tensor]) -> None:
        super().__init__(None, "toy")
        self.net = net
        self.index = {k: i for i, k in enumerate(table)}
        self.table = torch.stack(list(table.values()))  # [N, T, d_in]

    def sites(self) -> list[str]:
        return [self.SITE]

    def tokenize(self, inputs, padding_side=None):  # type: ignore[no-untyped-def]
        if isinstance(inputs, Batch):
            return inputs
        idx = torch.tensor([self.index[k] for k in ([inputs] if isinstance(inputs, str) else inputs)])
        T = self.table.shape[1]
        return Batch(idx[:, None].expand(-1, T).clone(), torch.ones(len(idx), T, dtype=torch.long), "right")

    def _attach(self, site, fn):  # type: ignore[no-untyped-def]
        return module_hooks.attach(self.net.site, "output", fn)

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.net(self.table[batch.input_ids[:, 0]])

    @property
    def ref(self) -> ck.ModelRef:
        return ck.ModelRef(name="toy", backend="toy")

    def hook_registry(self):  # type: ignore[no-untyped-def]
        return module_hooks.hook_registry(self.net)


