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




def _readout_net(g: torch.Generator) -> tuple[Net, torch.Tensor]:
    """``h = ReLU(W1 x)`` (x in R^32, h in R^64) read out by ``y = u·h + 0.1 r·h`` (spec section 6.3):
    random directions give widely spread TCAV scores on this net."""
    W1 = torch.randn(64, 32, generator=g, dtype=torch.float64) / 32**0.5
    u = torch.randn(64, generator=g, dtype=torch.float64)
    u /= u.norm()
    r = torch.randn(64, generator=g, dtype=torch.float64)
    r /= r.norm()
    pre = torch.nn.Linear(32, 64, bias=False, dtype=torch.float64)
    pre.weight.data = W1
    head = u + 0.1 * r

    class Post(torch.nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            y = torch.relu(h) @ head
            return torch.stack([y, torch.zeros_like(y)], -1)

    return Net(pre, Post()), 3 * torch.linalg.pinv(W1) @ u


def planted_model(vector_model, seed: int, null: bool, n_concept: int = 40, n_random: int = 20, n_targets: int = 50):  # type: ignore[no-untyped-def]
    """The spec's planted concept: examples shifted so their activations move along ``u``."""
    g = torch.Generator().manual_seed(seed)
    net, shift = _readout_net(g)
    table = {}
    for i in range(n_concept):
        x = torch.randn(32, generator=g, dtype=torch.float64)
        table[f"c{i}"] = (x if null else x + shift)[None]
    for i in range(n_random * n_concept):
        table[f"r{i}"] = torch.randn(1, 32, generator=g, dtype=torch.float64)
    for i in range(n_targets):
        table[f"t{i}"] = torch.randn(1, 32, generator=g, dtype=torch.float64)
    model = vector_model(net, table)
    config = {
        "concepts": [{"name": "planted", "examples": [f"c{i}" for i in range(n_concept)]}],
        "targets": [f"t{i}" for i in range(n_targets)],
        "objective": {"kind": "token_logit", "token": 0},
        "sites": [model.SITE],
        "random_pool": [f"r{i}" for i in range(n_random * n_concept)],
        "n_random": n_random,
        "seed": seed,
    }
    return model, config


def null_concepts_model(seed: int, n_concepts: int = 20, n_concept: int = 20, n_pool: int = 400, n_targets: int = 30):  # type: ignore[no-untyped-def]
    """``n_concepts`` null concepts drawn like the pool (N(0, I) inputs) on the read-out net."""
    g = torch.Generator().manual_seed(seed)
    net, _ = _readout_net(g)
    table = {}
    for k in range(n_concepts):
        for i in range(n_concept):
            table[f"n{k}_{i}"] = torch.randn(1, 32, generator=g, dtype=torch.float64)
    for i in range(n_pool):
        table[f"r{i}"] = torch.randn(1, 32, generator=g, dtype=torch.float64)
    for i in range(n_targets):
        table[f"t{i}"] = torch.randn(1, 32, generator=g, dtype=torch.float64)
    model = VectorModel(net, table)
    config = {
        "concepts": [{"name": f"null{k}", "examples": [f"n{k}_{i}" for i in range(n_concept)]} for k in range(n_concepts)],
        "targets": [f"t{i}" for i in range(n_targets)],
        "objective": {"kind": "token_logit", "token": 0},
        "sites": [model.SITE],
        "random_pool": [f"r{i}" for i in range(n_pool)],
        "seed": seed,
    }
    return model, config


class Stack(torch.nn.Module):
    """``h_{l+1} = ReLU(A_l h_l)`` for ``l < L``, read out by ``y = u · h_L``; each ``h_l`` is a site."""

    def __init__(self, A: list[torch.Tensor], u: torch.Tensor) -> None:
        super().__init__()
        self.A, self.u = A, u
        self.sites = torch.nn.ModuleList(torch.nn.Identity() for _ in A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for A, site in zip(self.A, self.sites):
            h = site(torch.relu(h @ A.T))
        y = h @ self.u
        return torch.stack([y, torch.zeros_like(y)], -1)


class StackModel(VectorModel):
    """A multi-site toy model: sites ``blocks.{l}.hook_resid_post`` are the stack's layers."""

    def __init__(self, net: Stack, table: dict[str, torch.Tensor]) -> None:
        super().__init__(net, table)  # type: ignore[arg-type]

    def sites(self) -> list[str]:
        return [f"blocks.{l}.hook_resid_post" for l in range(len(self.net.sites))]

    def _attach(self, site, fn):  # type: ignore[no-untyped-def]
        return module_hooks.attach(self.net.sites[int(site.split(".")[1])], "output", fn)

    @property
    def n_layers(self) -> int:
        return len(self.net.sites)


def stack_model(seed: int, L: int = 4, d: int = 16, n_set: int = 15, n_pool: int = 300, n_targets: int = 40, shift: float = 1.0,
                residual: float | None = 0.5):  # type: ignore[no-untyped-def]
    """The spec's synthetic multi-layer stack (section 11.5.4): a concept shifted along an input
    direction, 15 examples per set, so per-layer CAVs are noisy. ``residual`` makes each layer
    ``A_l = I + residual * N(0, 1/d)`` (layers share a basis, as an LLM's residual stream does,
    which identity dim_align assumes); ``None`` gives independent random ``A_l``."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, dtype=torch.float64)
    A = [(eye + residual * torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5) if residual is not None
         else torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 * 1.4 for _ in range(L)]
    u = torch.randn(d, generator=g, dtype=torch.float64)
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    table = {f"c{i}": (torch.randn(d, generator=g, dtype=torch.float64) + shift * direction)[None] for i in range(n_set)}
    table.update({f"r{i}": torch.randn(1, d, generator=g, dtype=torch.float64) for i in range(n_pool)})
    table.update({f"t{i}": torch.randn(1, d, generator=g, dtype=torch.float64) for i in range(n_targets)})
    model = StackModel(Stack(A, u), table)
    config = {
        "concepts": [{"name": "shifted", "examples": [f"c{i}" for i in range(n_set)]}],
        "targets": [f"t{i}" for i in range(n_targets)],
        "objective": {"kind": "token_logit", "token": 0},
        "sites": model.sites(),
        "random_pool": [f"r{i}" for i in range(n_pool)],
        "random_size": n_set,
        "n_random": 10,
        "seed": seed,
        "min_cav_accuracy": 0.0,
        "test": "two_sample_random",
    }
    return model, config
