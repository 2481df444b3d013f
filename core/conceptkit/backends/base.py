"""The ``Model`` interface every method is written against, and the engine shared by backends.

A backend supplies four things: the sites it supports, how to attach a function to a site
(returning a :class:`~conceptkit.handles.Handle`), how to run a forward pass on token ids with an
attention mask, and weight access. Everything else here (tokenisation, batching, token
reduction, interventions, gradients, generation, streaming) is written once, so a canonical site
means the same tensor and the same operation on every backend.

The operations build :class:`~conceptkit.plans.Plan` objects, one per batch, and hand them to
:meth:`Model.execute`; by default the :class:`~conceptkit.plans.LocalExecutor` carries them out
with the hooks above. A backend that runs models elsewhere overrides ``execute`` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic
import torch

from conceptkit import interventions as iv
from conceptkit.capabilities import Capability
from conceptkit.data import Batch, PaddingSide, Reduce, validate_batch
from conceptkit.errors import InputError
from conceptkit.handles import Handle, HandleGroup
from conceptkit.plans import GradRequest, LocalExecutor, Plan, PlanOutput, Read
from conceptkit.sites import is_pattern_site, unknown_site
from conceptkit.virtual_sites import VirtualSites

if TYPE_CHECKING:
    from conceptkit.activations import Activations

Inputs = Any  # str | list[str] | Batch | dict(input_ids=..., attention_mask=...)
SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class ModelRef(pydantic.BaseModel):
    """A model's identity for provenance."""

    name: str
    revision: str | None = None
    weights_hash: str | None = None
    backend: str
    backend_version: str | None = None
    dtype: str = "float32"
    architecture: str | None = None
    processing: str | None = None  # e.g. TransformerLens compatibility mode


from conceptkit.data import is_token_input as _is_token_input  # noqa: E402 - one definition for every caller


class Model:
    """A model wrapped by a backend. Create through :func:`conceptkit.wrap` or ``load_model``."""

    backend_name: ClassVar[str] = "base"
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, tokenizer: Any, name: str, padding_side: PaddingSide | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = name
        # Policy: right padding unless asked otherwise, whatever the tokenizer object says
        # (nnsight mutates shared tokenizers to left padding; hook_points.md §6).
        self.padding_side: PaddingSide = padding_side or "right"
        self._batch: Batch | None = None  # the batch being run, for position-aware hooks
        self._owned: list[Handle] = []
        self._virtual = VirtualSites()

    # -- what a backend implements --------------------------------------------------------
    def native_sites(self) -> list[str]:
        """Canonical sites the backend itself supports, in execution order."""
        raise NotImplementedError

    def _attach(self, site: str, fn: SiteFn) -> Handle:
        """Call ``fn(activation)`` at ``site`` on every forward; a returned tensor replaces it."""
        raise NotImplementedError

    def _forward(self, batch: Batch) -> torch.Tensor:
        """Run the model; return logits ``[B, T, V]`` (or final hidden states for encoders)."""
        raise NotImplementedError

    def execute(self, plan: Plan) -> PlanOutput:
        """Carry out one plan (one forward pass over one batch). Backends that do not run
        in-process hooks override this; the default is the local hook engine."""
        return LocalExecutor(self).execute(plan)

    @property
    def ref(self) -> ModelRef:
        raise NotImplementedError

    @property
    def weights(self) -> Any:
        raise NotImplementedError(f"backend {self.backend_name!r} offers no weight access")

    def apply_edit(self, edit: Any, *, check_hash: bool = True) -> Handle:
        """Apply a :class:`conceptkit.WeightEdit` or ``WeightEditSet``; the handle undoes exactly
        it (any order of removal; see :mod:`conceptkit.edits`)."""
        from conceptkit.edits import apply_edit

        return apply_edit(self, edit, check_hash=check_hash)

    def raw_sites(self) -> list[str]:
        """Backend-specific addresses accepted besides canonical sites."""
        return []

    @property
    def d_model(self) -> int:
        raise NotImplementedError

    @property
    def n_layers(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int | None:
        """Number of token ids the embedding accepts (``None``: not checked)."""
        return None

    @property
    def max_context(self) -> int | None:
        """Longest input (in tokens) the model was built for (``None``: not checked)."""
        return None

    def hook_registry(self) -> list[tuple[str, str, int]]:
        """Every hook currently registered on the model (compare before/after for leaks)."""
        raise NotImplementedError

    def hook_count(self) -> int:
        return len(self.hook_registry())

    # -- sites ------------------------------------------------------------------------------
    def sites(self) -> list[str]:
        """Canonical and virtual sites of this model, in execution order."""
        return self._virtual_sites.with_virtual(self.native_sites())

    @property
    def _virtual_sites(self) -> VirtualSites:
        # Backends written before virtual sites may not call ``Model.__init__``.
        if "_virtual" not in self.__dict__:
            self._virtual = VirtualSites()
        return self._virtual

    def resolve_site(self, site: str) -> str:
        """Validate ``site``; unknown names raise an error suggesting the closest ones."""
        if not isinstance(site, str):
            raise InputError(f"a site must be a string, got {site!r}")
        if site in self._virtual_sites:
            return site
        known = self.sites()
        if site in known or self._is_raw_site(site):
            return site
        raise unknown_site(site, known)

    def _is_raw_site(self, site: str) -> bool:
        return False

    def add_virtual_sites(self, provider: Any) -> Handle:
        """Add the virtual sites of ``provider`` (a
        :class:`~conceptkit.virtual_sites.VirtualSiteProvider`, e.g. an attached SAE); they
        appear in :meth:`sites` and work wherever a site does until the handle is removed."""
        return self._virtual_sites.add(self, provider)

    def attach_sae(self, sae: Any, site: str | None = None) -> Handle:
        """Attach an SAE (object, record id or folder) at ``site`` (default: its own) as the
        virtual sites ``<site>.hook_sae_*`` (see :mod:`conceptkit.sae.attach`)."""
        from conceptkit.sae.attach import attach_sae

        return attach_sae(self, sae, site)

    def _hook_at(self, site: str, fn: SiteFn) -> Handle:
        """Attach ``fn`` at a resolved site, virtual or not (the engine's one way to hook)."""
        if site in self._virtual_sites:
            return self._virtual_sites.attach(self, site, fn)
        return self._attach(site, fn)

    # -- tokenisation (owned by the core: identical on every backend) -------------------------
    def tokenize(self, inputs: Inputs, padding_side: PaddingSide | None = None) -> Batch:
        """Token ids and mask for ``inputs`` with the model tokenizer's own special tokens.

        Policy: special tokens are what the model's tokenizer adds (``add_special_tokens=True``;
        conceptkit never prepends a BOS the tokenizer would not), padding is on
        ``padding_side`` (default: the model's), and the mask is always carried. Token ids
        given directly are checked: integer ids inside the vocabulary, a 0/1 mask of the same
        shape without holes, and no longer than the model's context.
        """
        side = padding_side or self.padding_side
        if isinstance(inputs, Batch):
            return validate_batch(inputs, self.vocab_size, self.max_context)
        if _is_token_input(inputs):
            ids = torch.as_tensor(inputs["input_ids"])
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else inputs["attention_mask"]
            if mask is None:
                raise InputError("token ids were given without an attention_mask; pass the tokenizer's mask")
            mask = torch.as_tensor(mask)
            if ids.dim() == 1 and mask.dim() == 1:
                ids, mask = ids.unsqueeze(0), mask.unsqueeze(0)
            batch = Batch(ids, mask, _infer_side(mask, side) if mask.dim() == 2 and mask.numel() else side)
            return validate_batch(batch, self.vocab_size, self.max_context)
        if isinstance(inputs, str):
            inputs = [inputs]
        texts = list(inputs)
        if not texts:
            raise InputError("no inputs: got an empty list of texts")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise InputError(f"inputs must be strings, got {bad[0]!r}")
        if self.tokenizer is None:
            raise InputError(f"model {self.name!r} has no tokenizer; pass token ids and an attention mask")
        old = self.tokenizer.padding_side
        self.tokenizer.padding_side = side
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        finally:
            self.tokenizer.padding_side = old
        if (enc["attention_mask"].sum(1) == 0).any():
            empty = int((enc["attention_mask"].sum(1) == 0).nonzero()[0])
            raise InputError(f"input {texts[empty]!r} tokenises to no tokens")
        limit = self.max_context
        if limit is not None and enc["input_ids"].shape[1] > limit:
            longest = int(enc["attention_mask"].sum(1).argmax())
            raise InputError(
                f"input {_short(texts[longest])!r} is {int(enc['attention_mask'][longest].sum())} tokens long; "
                f"model {self.name!r} takes at most {limit} tokens"
            )
        return Batch(enc["input_ids"], enc["attention_mask"], side)

    def batches(self, inputs: Inputs, batch_size: int, padding_side: PaddingSide | None = None) -> Iterator[Batch]:
        """Split inputs into batches; each is padded only to its own longest example."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return self._batches(inputs, batch_size, padding_side)

    def _batches(self, inputs: Inputs, batch_size: int, padding_side: PaddingSide | None) -> Iterator[Batch]:
        if _is_token_input(inputs):
            full = self.tokenize(inputs, padding_side)
            for start in range(0, len(full), batch_size):
                sl = slice(start, start + batch_size)
                yield Batch(full.input_ids[sl], full.attention_mask[sl], full.padding_side, torch.arange(len(full))[sl])
            return
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise InputError("no inputs: got an empty list of texts")
        for start in range(0, len(texts), batch_size):
            b = self.tokenize(texts[start : start + batch_size], padding_side)
            b.index = torch.arange(start, start + len(b))
            yield b

    # -- hooks and interventions ---------------------------------------------------------------
    def add_hook(self, site: str, fn: SiteFn) -> Handle:
        """Attach ``fn`` at ``site``; the returned handle removes exactly this hook."""
        return self._hook_at(self.resolve_site(site), fn)

    def _intervention_fn(self, intervention: iv.Intervention) -> SiteFn:
        pattern = is_pattern_site(intervention.site)

        def hook(x: torch.Tensor) -> torch.Tensor:
            if pattern:  # [B, H, Tq, Tk]: positions count along the query axis
                x = x.transpose(1, 2)
            batch = self._batch
            if batch is None or x.dim() < 2 or x.shape[:2] != batch.attention_mask.shape:
                if intervention.positions != "all":
                    raise InputError(
                        f"intervention at {intervention.site!r} with positions={intervention.positions!r} "
                        "needs conceptkit to run the batch (use model.run/generate/capture)"
                    )
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            else:
                mask = batch.position_mask(intervention.positions)
            out = intervention.apply(x, mask)
            return out.transpose(1, 2) if pattern else out

        return hook

    def intervene(self, interventions: Sequence[Any]) -> HandleGroup:
        """Apply interventions until the returned handle is removed (use as ``with``)."""
        parsed = iv.parse_all(interventions)
        group = HandleGroup(description=f"{len(parsed)} intervention(s)")
        try:
            for item in parsed:
                group.add(self.add_hook(item.site, self._intervention_fn(item)))
        except BaseException:
            group.remove()
            raise
        return group

    @contextlib.contextmanager
    def _running(self, batch: Batch, interventions: Sequence[Any] = ()) -> Iterator[None]:
        previous, self._batch = self._batch, batch
        try:
            with self.intervene(interventions):
                yield
        finally:
            self._batch = previous

    # -- operations ------------------------------------------------------------------------------
    def capture(
        self,
        inputs: Inputs,
        sites: Sequence[str] | str,
        reduce: Reduce = "last",
        *,
        batch_size: int = 16,
        interventions: Sequence[Any] = (),
        stream_to: str | None = None,
        shard_mb: float = 256.0,
        progress: bool | None = None,
        dtype: torch.dtype = torch.float32,
        padding_side: PaddingSide | None = None,
    ) -> "Activations":
        """Activations at ``sites``, token-reduced, detached to CPU.

        ``reduce`` is ``last``/``first``/``mean`` (``[N, ...]``), a list of positions
        (``[N, P, ...]``) or ``all`` (real tokens flattened, ``[n_tokens, ...]`` with
        ``Activations.token_index`` giving example and position). With ``stream_to`` the
        activations go to safetensors shards under that folder as they come, so memory stays flat.
        Attention patterns (``attn.hook_pattern``, ``[B, H, Tq, Tk]``) are reduced over the query
        axis and their key axis counts unpadded positions.
        """
        from conceptkit.activations import ActivationSink

        site_list = [sites] if isinstance(sites, str) else list(sites)
        if not site_list:
            raise InputError("capture needs at least one site")
        resolved = [self.resolve_site(s) for s in site_list]
        parsed = iv.parse_all(interventions)
        # Stop the forward once all sites fired; only for canonical sites (each fires once).
        known = set(self.sites())
        stop_early = all(s in known for s in resolved)
        reads = [Read(s, reduce) for s in dict.fromkeys(resolved)]
        sink = ActivationSink(resolved, reduce, stream_to=stream_to, shard_bytes=int(shard_mb * 2**20))
        batch_iter = self.batches(inputs, batch_size, padding_side)
        for batch in _progress(batch_iter, inputs, batch_size, progress, "capture"):
            plan = Plan(batch, reads=reads, interventions=parsed, stop_after_reads=stop_early, read_dtype=dtype)
            sink.add(self.execute(plan).reads, batch)
        return sink.finish()

    def run(
        self,
        inputs: Inputs,
        interventions: Sequence[Any] = (),
        *,
        reduce: Reduce = "last",
        batch_size: int = 16,
        padding_side: PaddingSide | None = None,
    ) -> torch.Tensor:
        """Model output (logits, or final hidden states for encoders), token-reduced."""
        parsed = iv.parse_all(interventions)
        outs = []
        for batch in self.batches(inputs, batch_size, padding_side):
            result = self.execute(Plan(batch, interventions=parsed, output="reduced", output_reduce=reduce))
            outs.append(result.output)
        return torch.cat(outs)

    def grad(
        self,
        inputs: Inputs,
        site: str,
        objective: Any,
        *,
        reduce: Reduce = "last",
        interventions: Sequence[Any] = (),
        batch_size: int = 16,
        padding_side: PaddingSide | None = None,
        return_activations: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-example gradient of a scalar ``objective`` w.r.t. the activations at ``site``.

        ``objective`` is an :mod:`conceptkit.objectives` object (token logit, logit difference,
        loss, logit functional, inner-site functional, or one a plugin registered), its dict
        form, or a callable ``(output [B,T,V], batch) -> [B]``. Examples do not interact (the
        mask keeps them apart), so one backward of the batch sum gives per-example gradients.
        The gradient is reduced so that ``g · v`` is the directional derivative for a change
        ``v`` of the reduced activation (see :func:`conceptkit.data.scatter_grad_reduction`).
        Parameters get no ``.grad``.
        """
        from conceptkit.objectives import BoundObjective, as_objective

        if Capability.GRADIENTS not in self.capabilities:
            from conceptkit.errors import CapabilityError

            raise CapabilityError(f"backend {self.backend_name!r} does not offer gradients")
        obj = as_objective(objective, self)  # validated once, before any compute
        for inner in getattr(obj, "sites", ()):
            self.resolve_site(inner)
        site = self.resolve_site(site)
        parsed = iv.parse_all(interventions)
        # Objective data travels in the plan as data (executors elsewhere rebuild it); callables are local.
        request = GradRequest(site, obj.objective if isinstance(obj, BoundObjective) else obj, reduce, return_activations)
        grads, acts = [], []
        for batch in _progress(self.batches(inputs, batch_size, padding_side), inputs, batch_size, None, "gradients"):
            result = self.execute(Plan(batch, interventions=parsed, grad=request))
            grads.append(result.grads)
            if return_activations:
                acts.append(result.grad_activations)
        if return_activations:
            return torch.cat(grads), torch.cat(acts)
        return torch.cat(grads)

    def nll(
        self,
        inputs: Inputs,
        interventions: Sequence[Any] = (),
        *,
        batch_size: int = 16,
        padding_side: PaddingSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token negative log-likelihood (nats) summed per example, and tokens predicted.

        ``nll.sum() / ln 2 / n_bytes`` is the bits-per-byte of a text collection.
        """
        parsed = iv.parse_all(interventions)
        totals, counts = [], []
        for batch in _progress(self.batches(inputs, batch_size, padding_side), inputs, batch_size, None, "log-likelihood"):
            logits = self.execute(Plan(batch, interventions=parsed, output="logits")).output.float()
            logp = torch.log_softmax(logits[:, :-1], -1)
            target = batch.input_ids[:, 1:].to(logp.device)
            valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).to(logp.device).float()
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * valid
            totals.append(nll.sum(1).double().cpu())
            counts.append(valid.sum(1).long().cpu())
        return torch.cat(totals), torch.cat(counts)

    def generate(
        self,
        inputs: Inputs,
        interventions: Sequence[Any] = (),
        *,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        policy: Any = None,
        chat: bool | None = None,
        positions: str = "all",
        return_steps: bool = False,
        batch_size: int = 8,
        use_cache: bool = True,
    ) -> Any:
        """Generate continuations (a :class:`conceptkit.generation.Generation`, a ``list[str]``).

        Interventions apply at every step; a ``policy`` reads sites after each forward and
        chooses the next step's interventions. Uses the KV cache (``_forward_cached``) where the
        backend has one. Positions, policies, sampling and chat: :mod:`conceptkit.generation`.
        """
        from conceptkit.generation import generate

        return generate(
            self, inputs, interventions, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, policy=policy, chat=chat, positions=positions,  # type: ignore[arg-type]
            return_steps=return_steps, batch_size=batch_size, use_cache=use_cache,
        )

    def _forward_cached(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """One incremental forward for generation: logits ``[B, t, V]`` of the ``t`` new columns
        and the extended cache. ``attention_mask`` spans cache + new columns; ``past`` is None
        for the prefill. Backends without a KV cache leave this unimplemented (generation then
        recomputes the whole sequence at each step)."""
        raise NotImplementedError(f"backend {self.backend_name!r} has no KV cache")

    # -- bookkeeping --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<conceptkit {self.backend_name} model {self.name!r}>"

    def _repr_html_(self) -> str:
        """Jupyter: name, backend, layers, width and number of sites, as a table."""
        from conceptkit._html import model_html

        return model_html(self)


def _infer_side(mask: torch.Tensor, default: PaddingSide) -> PaddingSide:
    """Padding side of an explicit mask: left if any row starts with padding."""
    if (mask[:, 0] == 0).any():
        return "left"
    if (mask[:, -1] == 0).any():
        return "right"
    return default


def _progress(it: Iterator[Batch], inputs: Inputs, batch_size: int, show: bool | None, what: str) -> Iterator[Batch]:
    """Batches with a progress bar and an estimate when progress is on (``conceptkit.progress``)."""
    from conceptkit import progress

    try:
        n = len(inputs) if not isinstance(inputs, (str, dict, Batch)) else 1
    except TypeError:
        n = 1
    total = -(-n // batch_size)
    yield from progress.track(it, total=total, description=f"{what} ({n} inputs)", unit="batches", show=show)



def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
