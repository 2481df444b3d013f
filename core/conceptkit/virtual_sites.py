"""Virtual sites: named tensors computed from a real site (SAE latents, a change of basis).

A *provider* turns its base site's activation into one or more virtual tensors, offers each to
the hooks attached to its names (which may read or replace it), and hands back the base
activation to continue with. Hooks attached to a virtual name are ordinary site hooks: capture
(every reduction, streaming), interventions, gradients and generation policies use them like any
other site, because the engine attaches them here instead of on the backend.

One hook on the base site drives all of a provider's taps, and only while at least one tap is
attached, so a provider costs nothing when nobody reads its names.

Example:
    >>> class Doubled:  # a toy provider: "<site>.hook_double" is 2 * x
    ...     base_site = "blocks.0.hook_resid_post"
    ...     def names(self): return [self.base_site + ".hook_double"]
    ...     def run(self, x, taps):
    ...         fn = taps.get(self.names()[0])
    ...         new = fn(2 * x) if fn else None
    ...         return None if new is None else new / 2
    >>> handle = model.add_virtual_sites(Doubled())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pydantic
import torch

from conceptkit.errors import InputError
from conceptkit.handles import Handle

if TYPE_CHECKING:
    from conceptkit.backends.base import Model

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@runtime_checkable
class VirtualSiteProvider(Protocol):
    """Computes virtual tensors from ``base_site`` (see the module docstring)."""

    base_site: str

    def names(self) -> list[str]:
        """The virtual site names, in the order ``run`` computes them."""
        ...

    def run(self, x: torch.Tensor, taps: dict[str, SiteFn]) -> torch.Tensor | None:
        """Compute the virtual tensors from ``x``, call ``taps[name](t)`` for each attached name
        (a returned tensor replaces ``t`` downstream), and return the new base activation, or
        ``None`` when nothing was replaced (so an untouched forward stays bit-identical)."""
        ...


class VirtualSiteSpec(pydantic.BaseModel):
    """Virtual sites as data (a registered ``virtual_site`` component): ``kind`` names it and
    ``build(model)`` returns the provider, so ``model.add_virtual_sites({"kind": ..., ...})``
    works from JSON (an SAE record id and a site, say)."""

    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    def build(self, model: "Model") -> VirtualSiteProvider:
        raise NotImplementedError  # pragma: no cover - abstract


def compose(fns: list[SiteFn]) -> SiteFn:
    """Several hooks at one site as one: each sees the previous one's replacement."""
    if len(fns) == 1:
        return fns[0]

    def run_all(t: torch.Tensor) -> torch.Tensor | None:
        replaced = False
        for fn in fns:
            new = fn(t)
            if new is not None:
                t, replaced = new, True
        return t if replaced else None

    return run_all


@dataclass
class _Entry:
    provider: Any
    names: list[str]
    taps: dict[str, list[tuple[int, SiteFn]]] = field(default_factory=dict)
    driver: Handle | None = None

    def attached(self) -> dict[str, SiteFn]:
        return {name: compose([fn for _, fn in fns]) for name, fns in self.taps.items() if fns}


class VirtualSites:
    """The providers added to one model and the hooks attached to their names."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Entry] = {}
        self._entries: list[_Entry] = []
        self._next_id = 0

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    def with_virtual(self, sites: list[str]) -> list[str]:
        """``sites`` with each provider's names inserted right after its base site."""
        if not self._entries:
            return sites
        out = list(sites)
        for entry in self._entries:
            base = entry.provider.base_site
            at = out.index(base) + 1 if base in out else len(out)
            out[at:at] = entry.names
        return out

    def add(self, model: "Model", provider: Any) -> Handle:
        """Register ``provider``'s names on ``model``; the handle removes them (and their hooks).

        ``provider`` may also be a ``virtual_site`` component (object or dict), built here."""
        if isinstance(provider, (dict, pydantic.BaseModel)) and not isinstance(provider, VirtualSiteProvider):
            from conceptkit import components

            spec = components.parse("virtual_site", provider)
            if not hasattr(spec, "build"):
                raise InputError(f"virtual_site component {spec!r} has no build(model) method")
            provider = spec.build(model)
        if not isinstance(provider, VirtualSiteProvider):
            raise InputError(f"{provider!r} is not a virtual-site provider: it needs base_site, names() and run()")
        model.resolve_site(provider.base_site)
        names = list(provider.names())
        if not names or not all(isinstance(n, str) and n for n in names):
            raise InputError(f"virtual-site provider {provider!r} gave no usable names: {names!r}")
        taken = set(model.sites()) | set(self._by_name)
        clash = [n for n in names if n in taken or model._is_raw_site(n)]
        if clash or len(set(names)) != len(names):
            raise InputError(f"virtual site name {(clash or names)[0]!r} is already a site of {model.name!r}")
        entry = _Entry(provider, names)
        self._entries.append(entry)
        for name in names:
            self._by_name[name] = entry

        def remove() -> None:
            if entry.driver is not None:
                entry.driver.remove()
                entry.driver = None
            entry.taps.clear()
            self._entries.remove(entry)
            for name in names:
                self._by_name.pop(name, None)

        return Handle(remove, f"virtual sites {names[0]}{' ...' if len(names) > 1 else ''}")

    def attach(self, model: "Model", name: str, fn: SiteFn) -> Handle:
        """Attach ``fn`` at virtual site ``name``; the base-site driver is added with the first tap."""
        entry = self._by_name[name]
        tap_id, self._next_id = self._next_id, self._next_id + 1
        entry.taps.setdefault(name, []).append((tap_id, fn))

        def remove() -> None:
            fns = entry.taps.get(name, [])
            entry.taps[name] = [(i, f) for i, f in fns if i != tap_id]
            if not any(entry.taps.values()) and entry.driver is not None:
                entry.driver.remove()
                entry.driver = None

        handle = Handle(remove, f"hook on virtual site {name}")
        if entry.driver is None:

            def driver(x: torch.Tensor) -> torch.Tensor | None:
                return entry.provider.run(x, entry.attached())

            try:
                entry.driver = model._hook_at(entry.provider.base_site, driver)
            except BaseException:
                handle.remove()
                raise
        return handle
