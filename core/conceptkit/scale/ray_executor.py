"""The Ray executor: a dataset's texts sharded over Ray workers, each loading the model once.

The driver splits the texts into batch-aligned shards (:func:`~conceptkit.scale.shards.shard_ranges`),
hands them to a pool of worker actors, and merges the results in dataset order with global
example indices. Because every worker runs exactly the batches the single-process run would,
captures equal ``model.capture`` bit for bit (same machine, same dtype).

Failures: a worker that dies mid-shard (killed, out of memory, node lost) is replaced by a fresh
actor and the shard is run again; a shard that fails ``max_attempts`` times (default 2) stops
the run with :class:`ShardFailedError` naming it, and nothing is written (streamed output goes
to a temporary folder that is renamed into place only when every shard has arrived).

Only the driver writes: workers return tensors and refuse to open the concept store.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from conceptkit.activations import Activations, cat_ragged
from conceptkit.data import Reduce
from conceptkit.errors import ConceptkitError, InputError, MissingDependencyError
from conceptkit.scale.moments import Moments
from conceptkit.scale.shards import Shard, globalise_token_index, merge_shards, shard_plan, shard_ranges

WORKER_ENV = "CONCEPTKIT_RAY_WORKER"
_CHAOS_ENV = "CONCEPTKIT_SCALE_CHAOS"  # tests: a folder of kill tickets (see _maybe_die)


class ShardFailedError(ConceptkitError):
    """A shard failed on every attempt; the run stopped and nothing was written."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the Ray executor needs Ray: pip install 'conceptkit[ray]'"
        ) from e
    return ray


def _forbid_store() -> None:
    """Workers never open the concept store: only the driver writes (SQLite over NFS is unsafe)."""
    from conceptkit.errors import StoreError
    from conceptkit.store import local

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise StoreError("a Ray worker may not open the concept store: only the driver writes records")

    local.LocalStore.__init__ = refuse  # type: ignore[method-assign]


def _maybe_die(shard: int) -> None:
    """Test hook: if a kill ticket exists for this shard, consume it and SIGKILL this process."""
    folder = os.environ.get(_CHAOS_ENV)
    if not folder:
        return
    tickets = sorted(Path(folder).glob(f"shard-{shard}-*"))
    if tickets:
        tickets[0].unlink()
        os.kill(os.getpid(), signal.SIGKILL)


class _Worker:
    """One Ray actor: loads the model once and captures shards on request."""

    def __init__(self, model_name: str, backend: str, load_kwargs: dict[str, Any], threads: int | None = None) -> None:
        os.environ[WORKER_ENV] = "1"
        _forbid_store()
        if threads:
            torch.set_num_threads(threads)  # workers sharing a machine must not each take every core
        import conceptkit as ck

        self.model = ck.load_model(model_name, backend=backend, **load_kwargs)

    def pid(self) -> int:
        return os.getpid()

    def identity(self) -> dict[str, Any]:
        """What must match the driver's model: weights hash and padding side."""
        return {"weights_hash": self.model.ref.weights_hash, "padding_side": self.model.padding_side}

    def try_open_store(self) -> str:
        """For tests: what happens when worker code tries to open the store."""
        import conceptkit as ck

        try:
            ck.open_store()
        except ConceptkitError as e:
            return str(e)
        return "opened"

    def capture(self, shard: int, inputs: Any, sites: list[str], reduce: Any, batch_size: int,
                interventions: list[Any], dtype: str) -> dict[str, Any]:
        _maybe_die(shard)
        acts = self.model.capture(inputs, sites, reduce, batch_size=batch_size, interventions=interventions,
                                  progress=False, dtype=getattr(torch, dtype))
        return {"tensors": {s: acts[s] for s in acts.sites}, "token_index": acts.token_index}

    def moments(self, shard: int, inputs: Any, site: str, reduce: Any, batch_size: int,
                labels: Any, interventions: list[Any] = ()) -> Moments:  # type: ignore[assignment]
        _maybe_die(shard)
        return capture_moments(self.model, inputs, site, reduce, batch_size=batch_size, labels=labels,
                               interventions=interventions)


def n_inputs(inputs: Any) -> int:
    """How many examples ``inputs`` holds (texts, or token ids as a dict / Batch)."""
    if isinstance(inputs, str):
        return 1
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs.input_ids
    return int(ids.shape[0])


def slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    """Examples ``start:stop`` of texts or of token ids (a dict of ``[n, T]`` tensors / a Batch)."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs[start:stop])
    if isinstance(inputs, dict):
        return {k: v[start:stop] for k, v in inputs.items()}
    return {"input_ids": inputs.input_ids[start:stop], "attention_mask": inputs.attention_mask[start:stop]}


def capture_moments(model: Any, inputs: Any, site: str, reduce: Any, *, batch_size: int = 16, labels: Any = None,
                    interventions: Any = ()) -> Moments:
    """One shard's :class:`Moments`: ``model.capture`` then :func:`shard_moments`. The same
    function runs on a Ray worker and in the driver's local path, so both give the same bits."""
    acts = model.capture(inputs, [site], reduce, batch_size=batch_size, interventions=list(interventions), progress=False)
    return shard_moments(acts, site, labels)


def shard_moments(acts: Activations, site: str, labels: Any) -> Moments:
    """Moments of one capture's rows (``all``: every token; else one row per example).

    ``labels`` is ``None``, a ``[n_examples, k]`` float tensor (repeated per token for ``all``)
    or, for ``all``, a list with one ``[n_tokens_i, k]`` tensor per example (a label per token)."""
    x = acts[site]
    x = x.reshape(-1, x.shape[-1])
    z = None
    if isinstance(labels, (list, tuple)):
        z = torch.cat([torch.as_tensor(t, dtype=torch.float64).reshape(len(t), -1) for t in labels])
        if z.shape[0] != x.shape[0]:
            raise InputError(f"{z.shape[0]} token labels for {x.shape[0]} tokens at {site!r}: label every token of every text")
    elif labels is not None:
        z = labels.reshape(labels.shape[0], -1).to(torch.float64)
        if acts.reduce == "all":
            z = z[acts.token_index[:, 0]]  # type: ignore[index]
        elif z.shape[0] != x.shape[0]:
            z = z.repeat_interleave(x.shape[0] // z.shape[0], 0)
    return Moments.of(x, z)


class RayCapture:
    """A pool of Ray workers holding one model each (``model_name`` loaded with ``backend``).

    Use as a context manager (the workers are released at exit) or call :meth:`close`.
    ``address=None`` starts (or joins) a local Ray instance; ``"auto"`` or ``"ray://host:10001"``
    joins a cluster (docs/scale-out.md).
    """

    def __init__(self, model_name: str, backend: str = "transformer_lens", *, workers: int = 2,
                 address: str | None = None, max_attempts: int = 2, cpus_per_worker: float = 1.0,
                 num_gpus_per_worker: float = 0.0, threads_per_worker: int | None = None, **load_kwargs: Any) -> None:
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        if max_attempts < 1:
            raise InputError(f"max_attempts must be >= 1, got {max_attempts}")
        self.ray = ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = max(workers, os.cpu_count() or 1)
            ray.init(address=address, **kwargs)
        self.model_name, self.backend, self.load_kwargs = model_name, backend, load_kwargs
        self.workers, self.max_attempts = workers, max_attempts
        # torch threads per worker: one per CPU the actor reserved (workers on one machine
        # would otherwise each start a thread per core and fight over them)
        self.threads = threads_per_worker or max(1, int(cpus_per_worker))
        env = {"OMP_NUM_THREADS": str(self.threads), WORKER_ENV: "1"}
        if os.environ.get(_CHAOS_ENV):
            env[_CHAOS_ENV] = os.environ[_CHAOS_ENV]
        self._actor_cls = ray.remote(_Worker).options(
            num_cpus=cpus_per_worker, num_gpus=num_gpus_per_worker, max_restarts=0,
            runtime_env={"env_vars": env},
        )
        self._actors = [self._spawn() for _ in range(workers)]
        self.restarts = 0

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self.model_name, self.backend, self.load_kwargs, self.threads)

    def __enter__(self) -> "RayCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for a in self._actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self._actors])

    def identities(self) -> list[dict[str, Any]]:
        """Each worker's model identity (weights hash, padding side), for the driver to check."""
        return self.ray.get([a.identity.remote() for a in self._actors])

    # -- the scheduling loop -------------------------------------------------------------------
    def _map(self, shards: Sequence[Shard], submit: Any, on_result: Any) -> None:
        """Run ``submit(actor, shard)`` for every shard over the pool, retrying dead workers."""
        ray = self.ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        pending = deque(shards)
        attempts = {s.index: 0 for s in shards}
        idle = list(range(len(self._actors)))
        inflight: dict[Any, tuple[Shard, int]] = {}
        try:
            while pending or inflight:
                while pending and idle:
                    slot, shard = idle.pop(), pending.popleft()
                    attempts[shard.index] += 1
                    inflight[submit(self._actors[slot], shard)] = (shard, slot)
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                shard, slot = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the code raised: the worker is alive
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, ConceptkitError):
                        raise cause from None  # a user error (bad site...): retrying cannot help
                    self._retry_or_fail(shard, attempts, pending, e)
                except (RayActorError, WorkerCrashedError) as e:  # the worker died
                    self._actors[slot] = self._spawn()
                    self.restarts += 1
                    self._retry_or_fail(shard, attempts, pending, e)
                else:
                    on_result(shard, result)
                idle.append(slot)
        except BaseException:
            for ref in inflight:  # results nobody will read; force=True is refused for actor tasks
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished or gone: the original error matters
                    pass
            raise

    def _retry_or_fail(self, shard: Shard, attempts: dict[int, int], pending: deque, error: Exception) -> None:
        if attempts[shard.index] >= self.max_attempts:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ShardFailedError(
                f"{shard.describe()} failed {attempts[shard.index]} times (max_attempts={self.max_attempts}); "
                f"the run stopped and nothing was written. Last error: {type(error).__name__}: {reason}"
            )
        pending.appendleft(shard)

    # -- operations ------------------------------------------------------------------------------
    def capture(self, texts: Any, sites: Sequence[str] | str, reduce: Reduce = "last", *,
                batch_size: int = 16, shards: int | None = None, interventions: Sequence[Any] = (),
                stream_to: str | Path | None = None, dtype: torch.dtype = torch.float32,
                shard_size: int | None = None) -> Activations:
        """Like ``model.capture`` over ``texts`` (or token ids: a dict of ``[n, T]`` tensors),
        sharded over the workers; ``token_index`` holds dataset-wide example ids. ``shards``
        defaults to 4 per worker (a retry redoes little); ``shard_size`` (examples) fixes the
        shards instead. With ``stream_to``, the driver writes each shard's tensors as it arrives
        to a temporary folder, renamed to ``stream_to`` once all arrived (reopen with
        ``open_activations``)."""
        from conceptkit import interventions as iv

        inputs = [texts] if isinstance(texts, str) else texts if isinstance(texts, dict) or hasattr(texts, "input_ids") else list(texts)
        site_list = [sites] if isinstance(sites, str) else list(sites)
        if not site_list:
            raise InputError("capture needs at least one site")
        plan = self._plan(n_inputs(inputs), batch_size, shards, shard_size)
        parsed = self.ray.put(iv.parse_all(list(interventions)))  # validated here, sent once
        dtype_name = str(dtype).removeprefix("torch.")
        reduce_arg = reduce if isinstance(reduce, str) else list(reduce)

        def submit(actor: Any, shard: Shard) -> Any:
            return actor.capture.remote(shard.index, slice_inputs(inputs, shard.start, shard.stop), site_list, reduce_arg,
                                        batch_size, parsed, dtype_name)

        if stream_to is None:
            parts: dict[int, Any] = {}
            self._map(plan, submit, lambda shard, r: parts.__setitem__(shard.index, r))
            return merge_shards(parts, plan, site_list, reduce)
        return self._capture_to_disk(plan, submit, site_list, reduce, Path(stream_to))

    def _plan(self, n: int, batch_size: int, shards: int | None, shard_size: int | None) -> list[Shard]:
        if shard_size is not None:
            return shard_plan(n, shard_size, batch_size)
        return shard_ranges(n, shards or 4 * len(self._actors), batch_size)

    def _capture_to_disk(self, plan: list[Shard], submit: Any, sites: list[str], reduce: Reduce, out: Path) -> Activations:
        import json

        from safetensors.torch import save_file

        from conceptkit.activations import open_activations

        if out.exists() and any(out.iterdir()):
            raise InputError(f"output folder {str(out)!r} exists and is not empty")
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)

        def write(shard: Shard, r: dict[str, Any]) -> None:
            tensors = {s: cat_ragged([r["tensors"][s]]).contiguous() for s in sites}
            if reduce == "all":
                tensors["__token_index__"] = globalise_token_index(r["token_index"], shard)  # type: ignore[assignment]
            save_file(tensors, str(tmp / f"shard-{shard.index:05d}.safetensors"))

        try:
            self._map(plan, submit, write)
            meta = {"sites": sites, "reduce": reduce if isinstance(reduce, str) else list(reduce), "n_shards": len(plan)}
            (tmp / "activations.json").write_text(json.dumps(meta))
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return open_activations(out)

    def moments(self, texts: Any, site: str, reduce: Reduce = "all", *, labels: Any = None,
                batch_size: int = 16, shards: int | None = None, interventions: Sequence[Any] = (),
                n_classes: int | None = None, shard_size: int | None = None) -> Moments:
        """Streaming statistics of ``site`` over ``texts``: each worker returns its shard's
        :class:`Moments`, merged in shard order on the driver. ``labels`` give the cross moments
        LEACE needs: ``[n_texts]`` class ids or ``[n_texts, k]`` floats per example, or (with
        ``reduce="all"``) one sequence of class ids per text, a label per token
        (:func:`normalise_labels`)."""
        from conceptkit import interventions as iv

        inputs = texts if isinstance(texts, dict) or hasattr(texts, "input_ids") else list(texts)
        n = n_inputs(inputs)
        z = normalise_labels(labels, n, reduce, n_classes)
        plan = self._plan(n, batch_size, shards, shard_size)
        reduce_arg = reduce if isinstance(reduce, str) else list(reduce)
        parsed = self.ray.put(iv.parse_all(list(interventions)))
        parts: dict[int, Moments] = {}

        def submit(actor: Any, shard: Shard) -> Any:
            zs = None if z is None else z[shard.start:shard.stop]
            return actor.moments.remote(shard.index, slice_inputs(inputs, shard.start, shard.stop), site, reduce_arg,
                                        batch_size, zs, parsed)

        self._map(plan, submit, lambda shard, m: parts.__setitem__(shard.index, m))
        return Moments.merge_all(parts[s.index] for s in plan)


def normalise_labels(labels: Any, n: int, reduce: Reduce, n_classes: int | None = None) -> Any:
    """Labels as the shards take them: ``None``; a float ``[n, k]`` tensor (one row per example;
    ``[n]`` class ids one-hot encoded with ``n_classes`` or ``max + 1`` classes, counted over the
    whole dataset so that every shard has the same width); or, for per-token labels (``reduce``
    ``"all"`` and a list with one sequence per text), a list of ``n`` float ``[n_tokens_i, k]``
    tensors. With ``reduce="all"`` a list of lists always means a label per token: give
    multi-column per-example labels as a ``[n, k]`` tensor."""
    if labels is None:
        return None
    per_token = reduce == "all" and isinstance(labels, (list, tuple)) and len(labels) > 0 and (
        isinstance(labels[0], (list, tuple)) or (isinstance(labels[0], torch.Tensor) and labels[0].dim() >= 1))
    if len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} texts: the lengths must match")
    if not per_token:
        try:
            z = torch.as_tensor(labels)
        except (ValueError, TypeError) as e:
            raise InputError(f"labels must be one class id or one row per text (a label per token needs reduce='all'): {e}") from None
        if z.dim() == 1 and not z.is_floating_point():
            if int(z.min()) < 0:
                raise InputError(f"class labels must be >= 0, got {int(z.min())}")
            return torch.nn.functional.one_hot(z.long(), n_classes or int(z.max()) + 1).to(torch.float64)
        return z.reshape(n, -1).to(torch.float64)
    rows = [torch.as_tensor(row) for row in labels]
    if all(not r.is_floating_point() for r in rows):
        flat = torch.cat([r.reshape(-1) for r in rows])
        if flat.numel() and int(flat.min()) < 0:
            raise InputError(f"class labels must be >= 0, got {int(flat.min())}")
        k = n_classes or (int(flat.max()) + 1 if flat.numel() else 1)
        return [torch.nn.functional.one_hot(r.reshape(-1).long(), k).to(torch.float64) for r in rows]
    return [r.reshape(r.shape[0], -1).to(torch.float64) for r in rows]


def ray_capture(model_name: str, texts: Sequence[str], sites: Sequence[str] | str, reduce: Reduce = "last", *,
                backend: str = "transformer_lens", workers: int = 2, address: str | None = None,
                batch_size: int = 16, shards: int | None = None, stream_to: str | Path | None = None,
                max_attempts: int = 2, **kwargs: Any) -> Activations:
    """One-shot :meth:`RayCapture.capture` (starts the workers, captures, releases them)."""
    with RayCapture(model_name, backend, workers=workers, address=address, max_attempts=max_attempts) as pool:
        return pool.capture(texts, sites, reduce, batch_size=batch_size, shards=shards, stream_to=stream_to, **kwargs)


def ray_moments(model_name: str, texts: Sequence[str], site: str, reduce: Reduce = "all", *,
                backend: str = "transformer_lens", workers: int = 2, address: str | None = None,
                labels: torch.Tensor | None = None, batch_size: int = 16, shards: int | None = None,
                max_attempts: int = 2, **kwargs: Any) -> Moments:
    """One-shot :meth:`RayCapture.moments` (``kwargs``: ``interventions``, ``n_classes``, ``shard_size``)."""
    with RayCapture(model_name, backend, workers=workers, address=address, max_attempts=max_attempts) as pool:
        return pool.moments(texts, site, reduce, labels=labels, batch_size=batch_size, shards=shards, **kwargs)
