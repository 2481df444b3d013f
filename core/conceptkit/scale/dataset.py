"""Dataset-scale passes for methods: one call that runs locally, or over Ray when asked.

A method whose work is a pass over a dataset (LEACE statistics, second moments, SAE training
activations) calls :func:`dataset_moments` or :func:`dataset_capture` instead of
``model.capture``. Without Ray they run in this process through ``model.capture`` itself.
Ray is used only when asked: ``ray=`` on the call, or an active :func:`use_ray` block, which
``conceptkit run METHOD --ray [ADDRESS]`` enters for methods that declare ``supports_ray``.

Workers load the model *by name* (``ck.load_model(model.name, backend=...)``), so the model
must be one that loads by name; the driver checks that every worker's weights hash equals the
given model's before any shard runs. Inside a :func:`use_ray` block the worker pool of a model
is started once and reused by every call (a method makes one call per site). Only the driver
writes: workers return tensors.

The shards of :func:`dataset_moments` are fixed blocks of ``shard_size`` examples, whatever the
number of workers, and are merged in order, so the local result and the Ray result are the same
bits (and equal a one-pass fit to float64 rounding, ≤1e-12 relative).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conceptkit.data import Reduce
from conceptkit.errors import InputError
from conceptkit.scale.moments import Moments
from conceptkit.scale.ray_executor import (
    RayCapture,
    _import_ray,
    capture_moments,
    n_inputs,
    normalise_labels,
    slice_inputs,
)
from conceptkit.scale.shards import shard_plan

if TYPE_CHECKING:
    from conceptkit.activations import Activations
    from conceptkit.backends.base import Model

#: examples per shard of :func:`dataset_moments` (16 batches of 16): small enough that a
#: shard's activations fit in memory, large enough that a worker is busy for a while
DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` ``None`` starts (or joins) a Ray instance on this
    machine; ``"auto"`` or ``"ray://host:10001"`` joins a cluster (docs/scale-out.md)."""

    address: str | None = None
    workers: int = 2
    max_attempts: int = 2
    cpus_per_worker: float = 1.0
    threads_per_worker: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.max_attempts < 1:
            raise InputError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass
class _RaySession:
    """The worker pools of one :func:`use_ray` block (or of one call), one per model."""

    options: RayOptions
    pools: dict[tuple[str, str, str | None], RayCapture] = field(default_factory=dict)
    started_ray: bool = False
    #: pools the caller started (``use_ray(pool=...)``): used for their model, never closed here
    given: list[RayCapture] = field(default_factory=list)

    def pool(self, model: "Model") -> RayCapture:
        name, backend = ray_model_spec(model)
        mine = model.ref.weights_hash
        key = (name, backend, mine)
        if key in self.pools:
            return self.pools[key]
        given = next((p for p in self.given if (p.model_name, p.backend) == (name, backend)), None)
        if given is not None:
            pool = given
        else:
            ray = _import_ray()
            if not ray.is_initialized():
                self.started_ray = True
            o = self.options
            pool = RayCapture(name, backend, workers=o.workers, address=o.address, max_attempts=o.max_attempts,
                              cpus_per_worker=o.cpus_per_worker, threads_per_worker=o.threads_per_worker)
        try:
            theirs = pool.identities()
        except BaseException:
            if given is None:
                pool.close()
            raise
        want = {"weights_hash": mine, "padding_side": model.padding_side}
        bad = [t for t in theirs if t != want]
        if bad:
            if given is None:
                pool.close()
            raise InputError(
                f"the Ray workers loaded model {name!r} (backend {backend!r}) by name and got {bad[0]}, but the model "
                f"given has {want}: Ray workers can only load a model by name, so an in-memory model that was edited, "
                "wrapped or loaded with other options cannot be sent to them (run without Ray, or load it with "
                "ck.load_model(NAME, backend=...))"
            )
        self.pools[key] = pool
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            if not any(pool is g for g in self.given):
                pool.close()
        self.pools.clear()
        if self.started_ray:
            _import_ray().shutdown()
            self.started_ray = False


_ACTIVE: ContextVar[_RaySession | None] = ContextVar("conceptkit_ray_session", default=None)


@contextlib.contextmanager
def use_ray(address: str | None = None, *, workers: int = 2, max_attempts: int = 2, cpus_per_worker: float = 1.0,
            threads_per_worker: int | None = None, pool: RayCapture | None = None) -> Iterator[RayOptions]:
    """Run every :func:`dataset_moments` / :func:`dataset_capture` call in this block over Ray
    workers (``conceptkit run METHOD --ray [ADDRESS] --workers N`` enters it). Worker pools
    start on first use, are reused by later calls, and are released at the end of the block
    (as is the Ray instance, if this block started it). ``pool``: a :class:`RayCapture` you
    started, used for its model (and left running)."""
    session = _RaySession(RayOptions(address, workers, max_attempts, cpus_per_worker, threads_per_worker),
                          given=[] if pool is None else [pool])
    token = _ACTIVE.set(session)
    try:
        yield session.options
    finally:
        _ACTIVE.reset(token)
        session.close()


def active_ray() -> RayOptions | None:
    """The options of the enclosing :func:`use_ray` block, or ``None`` outside one."""
    session = _ACTIVE.get()
    return None if session is None else session.options


def ray_requested(ray: bool | str | RayOptions | None = None) -> bool:
    """Whether a dataset call with this ``ray`` argument runs over Ray (for methods that pick
    a different local algorithm, e.g. the erasure plugin's one-pass fit)."""
    return ray is not False and (ray is not None or _ACTIVE.get() is not None)


def _session(ray: bool | str | RayOptions | None, workers: int) -> tuple[_RaySession | None, bool]:
    """The session a call runs in and whether the call owns it (closes it when done)."""
    active = _ACTIVE.get()
    if ray is False or (ray is None and active is None):
        return None, False
    if ray is None:
        return active, False
    if isinstance(ray, RayOptions):
        options = ray
    elif ray is True or ray == "local":
        options = RayOptions(None, workers)
    elif isinstance(ray, str):
        options = RayOptions(ray, workers)
    else:
        raise InputError(f"ray must be None, False, True, 'local', an address or RayOptions, got {ray!r}")
    if active is not None and active.options == options:
        return active, False
    return _RaySession(options), True


def ray_model_spec(model: "Model") -> tuple[str, str]:
    """``(name, backend)`` by which Ray workers load ``model``, or a clear error why they can't."""
    from conceptkit.plugin_manager import get_manager

    name, backend = getattr(model, "name", None), getattr(model, "backend_name", None)
    if not isinstance(name, str) or not isinstance(backend, str):
        raise InputError(f"Ray workers load the model by name; {type(model).__name__} has no name and backend")
    if name in get_manager().registry.models or os.path.isdir(name) or "/" in name:
        return name, backend
    raise InputError(
        f"Ray workers load the model by name, and {name!r} (backend {backend!r}) is neither a named model "
        "(conceptkit models) nor a path or hub id: it was wrapped from an in-memory object, which the workers "
        "cannot load. Load it with ck.load_model(NAME, backend=...) or run without Ray."
    )


def _inputs(texts: Any) -> Any:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, dict) or hasattr(texts, "input_ids"):
        return texts
    return list(texts)


def dataset_moments(
    model: "Model",
    texts: Any,
    site: str,
    reduce: Reduce = "all",
    *,
    labels: Any = None,
    n_classes: int | None = None,
    interventions: Sequence[Any] = (),
    ray: bool | str | RayOptions | None = None,
    workers: int = 2,
    batch_size: int = 16,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Moments:
    """Float64 :class:`Moments` (count, mean, centred co-moments; ``second_moment`` is the
    uncentred ``E[xxᵀ]``) of ``site`` over ``texts`` (or token ids: a dict of ``[n, T]``
    tensors), with ``interventions`` applied. ``reduce="all"`` takes every real token as a
    row; ``last``/``first``/``mean`` one row per text.

    ``labels`` add the cross moments LEACE needs (``m.into(LeaceFitter(d, k))``): ``[n]`` class
    ids or ``[n, k]`` floats per text, or with ``reduce="all"`` one list of class ids per text (a
    label per token); class ids are one-hot over ``n_classes`` (default: the largest id + 1).

    ``ray``: ``None`` follows the enclosing :func:`use_ray` block (local outside one), ``False``
    forces local, ``True``/``"local"`` a Ray instance on this machine, a string joins that
    cluster with ``workers`` workers. The result does not depend on which (see the module doc).
    """
    inputs = _inputs(texts)
    n = n_inputs(inputs)
    z = normalise_labels(labels, n, reduce, n_classes)
    model.resolve_site(site)  # a bad site fails here, before any worker starts
    plan = shard_plan(n, shard_size, batch_size)
    session, owned = _session(ray, workers)
    if session is None:
        parts = [
            capture_moments(model, slice_inputs(inputs, s.start, s.stop), site, reduce, batch_size=batch_size,
                            labels=None if z is None else z[s.start:s.stop], interventions=interventions)
            for s in plan
        ]
        return Moments.merge_all(parts)
    try:
        return session.pool(model).moments(inputs, site, reduce, labels=z, batch_size=batch_size,
                                           interventions=interventions, shard_size=shard_size)
    finally:
        if owned:
            session.close()


def dataset_capture(
    model: "Model",
    texts: Any,
    sites: Sequence[str] | str,
    reduce: Reduce = "last",
    *,
    interventions: Sequence[Any] = (),
    ray: bool | str | RayOptions | None = None,
    workers: int = 2,
    batch_size: int = 16,
    shard_size: int | None = None,
    stream_to: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> "Activations":
    """Activations of ``sites`` over ``texts`` (or token ids), exactly ``model.capture``'s: run
    by ``model.capture`` locally, or over Ray (``ray`` as in :func:`dataset_moments`) with
    dataset-wide example indices in ``token_index``, equal bit for bit. ``stream_to`` writes
    safetensors shards (from the driver only; reopen with ``open_activations``)."""
    inputs = _inputs(texts)
    site_list = [sites] if isinstance(sites, str) else list(sites)
    session, owned = _session(ray, workers)
    if session is None:
        return model.capture(inputs, site_list, reduce, batch_size=batch_size, interventions=interventions,
                             stream_to=None if stream_to is None else str(stream_to), progress=False, dtype=dtype)
    for s in site_list:
        model.resolve_site(s)
    try:
        return session.pool(model).capture(inputs, site_list, reduce, batch_size=batch_size, interventions=interventions,
                                           stream_to=stream_to, dtype=dtype, shard_size=shard_size)
    finally:
        if owned:
            session.close()


def check_ray_support(method: Any) -> None:
    """Raise before any work if ``method`` (class or instance) does not declare ``supports_ray``."""
    if getattr(method, "supports_ray", False):
        return
    from conceptkit.plugin_manager import methods

    name = getattr(method, "name", None) or type(method).__name__
    able = sorted(n for n, cls in methods().items() if getattr(cls, "supports_ray", False))
    raise InputError(
        f"method {name!r} does not run over Ray (it declares no dataset-scale pass: supports_ray is False); "
        f"methods that do: {', '.join(able) or 'none installed'}"
    )
