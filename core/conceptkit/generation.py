"""Text generation with interventions and per-step policies, on the model's KV cache.

``Model.generate`` calls :func:`generate`. The loop is written once for every backend; a backend
only supplies ``Model._forward_cached(input_ids, attention_mask, position_ids, past)``, one
forward pass over the *new* columns that returns logits and the extended cache. A backend
without a KV cache (a TransformerLens-native model, a third-party backend) is run by recomputing
the full sequence at every step instead; see "Policies" for the one place where that differs.
A backend that executes plans itself (overrides ``Model.execute``, no ``_forward_cached``) gets
one :class:`~conceptkit.plans.Plan` per step and prompt, with each intervention's rows written
as explicit positions, so generation never needs its hooks. A backend that generates itself
(``model.native_generation``: the nnsight trace executor) takes batches with fixed
interventions and no policy whole.

Prompts are padded on the left (every row's newest token is then the last column), position ids
count real tokens only, and the attention mask always spans the whole sequence, so a batch
gives the same tokens as generating each prompt alone.

Positions
    Positions are over the full sequence (prompt + generated tokens), counted over real tokens
    (padding never shifts them). With the cache a forward computes only the new token's row, so
    a row is computed once, under the interventions active at that moment:

    * ``"all"``: every row: all prompt rows in the prefill, then each new token's row.
    * ``"first"``: position 0.
    * ``"last"``: the newest token of each forward: the prompt's last token, then each
      generated token (what a "last position" hook on HF ``generate`` does).
    * a list of ints: those positions of the sequence; negative ones count from the end of the
      *prompt* (``-1`` is the prompt's last token), since the sequence's end moves.

    These rows do not depend on whether the cache is used, so cached and recomputed generation
    agree (tested). ``generate(positions=...)`` further restricts the fixed interventions to
    ``"prompt"`` rows or ``"new"`` (generated) rows.

Policies
    A :class:`GenerationPolicy` reads sites after every forward (a read sees the site after the
    interventions there, i.e. what the rest of the model sees) and returns the interventions for
    the *next* forward. ``policy.positions`` chooses the rows they act on: ``"last"`` (default)
    the next forward's newest row only; ``"new"`` every generated row; ``"all"`` every row,
    prompt included; an intervention's own ``positions`` narrow that further, and a
    :class:`RowScoped` entry limits it to some rows of the batch. Rows already in the cache were computed under earlier decisions, so when a
    ``"new"``/``"all"`` policy changes its interventions, the affected rows are recomputed
    (the cache is cropped to the prompt, or dropped); returning the same interventions again
    costs one row. Without a KV cache, ``"last"`` interventions of a policy act on the newest
    row only, and earlier rows are recomputed without them; a backend that executes plans
    instead replays each ``"last"`` decision at the row it acted on, so it generates what the
    cached loop does.

Sampling and EOS
    ``temperature=0`` is greedy; ``temperature > 0`` samples, after HF's top-k then top-p
    filters, from a ``torch.Generator`` seeded by ``seed`` (the same seed draws what HF
    ``generate`` draws after ``torch.manual_seed``; tested). A row ends at the tokenizer's EOS,
    which ``token_ids`` keeps and the text drops; the batch stops when every row has ended.

Chat
    ``chat=True`` applies the tokenizer's chat template (``add_generation_prompt=True``) to each
    prompt (a string becomes one user message; a list of ``{"role", "content"}`` dicts is a
    conversation). ``chat=None`` (default) applies it only to conversations, never to plain
    strings: completing raw text is what the rest of conceptkit does (capture, steering), and a
    silent template would change the activations a user steers. ``chat=False`` never applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from conceptkit import interventions as iv
from conceptkit.errors import InputError
from conceptkit.handles import HandleGroup
from conceptkit.sites import is_pattern_site

if TYPE_CHECKING:
    from conceptkit.backends.base import Model

PolicyPositions = Literal["last", "all", "new"]
Scope = Literal["all", "new", "prompt"]

__all__ = ["Generation", "GenerationPolicy", "RowScoped", "StepRecord", "StepState", "generate"]


# -- public data ----------------------------------------------------------------------------------
@dataclass
class StepState:
    """What a policy sees after each forward pass (``B`` rows of the batch being generated).

    ``token_ids`` and ``attention_mask`` are left-padded ``[B, t]`` (prompt + tokens fed so
    far); ``new_token`` is the token the forward just consumed (``None`` after the prefill);
    ``reads[site]`` is ``[B, d]`` at each row's newest token and ``all_reads[site]`` the whole
    chunk just computed ``[B, T_chunk, ...]`` (``chunk_mask`` marks its real rows).
    """

    step: int
    token_ids: torch.Tensor
    attention_mask: torch.Tensor
    new_token: torch.Tensor | None
    reads: dict[str, torch.Tensor]
    all_reads: dict[str, torch.Tensor]
    chunk_mask: torch.Tensor
    prompt_lengths: torch.Tensor  # [B] real prompt tokens per row
    finished: torch.Tensor  # [B] bool: the row has produced EOS
    examples: list[int]  # index of each row in the inputs of generate


@dataclass(frozen=True)
class RowScoped:
    """An intervention that applies to some rows of the batch only (``rows``: ``[B]`` bool)."""

    intervention: Any
    rows: torch.Tensor | None = None


@dataclass
class StepRecord:
    """One forward pass of a generation (kept when ``return_steps=True``)."""

    step: int
    examples: list[int]
    input_token: torch.Tensor | None  # [B] the token this forward consumed (None: the prefill)
    next_token: torch.Tensor  # [B] the token sampled from this forward
    reads: dict[str, torch.Tensor]  # site -> [B, d] at the newest row (CPU)
    applied: list[RowScoped]  # fixed interventions, then the policy's, active in this forward
    recomputed_from: int | None = None  # first column recomputed when a policy forced it


class GenerationPolicy:
    """Decide the interventions step by step. Subclass it; the defaults read and do nothing.

    ``reads`` are sites (any site the model accepts) read at every forward; ``positions`` is
    where the returned interventions apply (``"last"``, ``"new"`` or ``"all"``, see the module
    docs). ``start`` is called once per batch before the prefill; ``step`` after each forward
    with a :class:`StepState` and returns interventions for the next forward: intervention
    objects or dicts (all rows), or :class:`RowScoped` / ``(intervention, rows)`` pairs. A policy
    may keep state on ``self``.
    """

    reads: Sequence[str] = ()
    positions: PolicyPositions = "last"

    def start(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        return None

    def step(self, state: StepState) -> list[Any]:
        return []


class Generation(list):
    """Generated texts (a ``list[str]``), with ``token_ids`` and ``prompt_ids`` per prompt.

    ``token_ids[i]`` are the new ids of prompt ``i`` up to and including its EOS;
    ``prompt_ids[i]`` the prompt's ids as fed (after any chat template, without padding);
    ``steps`` the per-forward :class:`StepRecord` list when ``return_steps=True`` (else ``None``),
    in batch order then step order.
    """

    def __init__(
        self,
        texts: Sequence[str] = (),
        token_ids: Sequence[torch.Tensor] = (),
        prompt_ids: Sequence[torch.Tensor] = (),
        steps: list[StepRecord] | None = None,
    ) -> None:
        super().__init__(texts)
        self.token_ids = list(token_ids)
        self.prompt_ids = list(prompt_ids)
        self.steps = steps


# -- settings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sampler:
    temperature: float
    top_k: int | None
    top_p: float | None
    generator: torch.Generator | None

    @classmethod
    def checked(cls, temperature: Any, top_k: Any, top_p: Any, seed: Any) -> "_Sampler":
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or not 0 < top_p <= 1
        ):
            raise InputError(f"top_p must be a finite number in (0, 1] or None, got {top_p!r}")
        if temperature == 0 and (top_k is not None or top_p is not None):
            raise InputError(
                f"top_k={top_k!r}/top_p={top_p!r} ask for sampling, which needs temperature > 0 (got {temperature!r}); "
                "pass temperature=1.0 to sample, or drop top_k/top_p for greedy decoding"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        gen = torch.Generator().manual_seed(seed) if seed is not None and temperature > 0 else None
        return cls(float(temperature), top_k, None if top_p is None else float(top_p), gen)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token ``[B]`` from last-position logits ``[B, V]`` (HF's warper order:
        temperature, then top-k, then top-p; the same filters, so the same seed samples alike)."""
        if self.temperature == 0:
            return logits.argmax(-1)
        scores = logits.float() / self.temperature
        if self.top_k is not None:
            k = min(self.top_k, scores.shape[-1])
            kth = torch.topk(scores, k).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if self.top_p is not None and self.top_p < 1:
            sorted_scores, order = torch.sort(scores, descending=False)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cum <= (1 - self.top_p)
            drop_sorted[..., -1:] = False  # always keep the most likely token
            drop = drop_sorted.scatter(1, order, drop_sorted)
            scores = scores.masked_fill(drop, -math.inf)
        probs = scores.softmax(-1)
        gen = self.generator
        if gen is not None and gen.device != probs.device:
            probs = probs.cpu()
        return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _context_length(model: "Model") -> int | None:
    """The model's maximum number of positions, where it declares one."""
    for owner in (getattr(model, "hf", None), getattr(model, "tl", None)):
        cfg = getattr(owner, "config", None) or getattr(owner, "cfg", None)
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


# -- prompts --------------------------------------------------------------------------------------
def _is_conversation(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) and "role" in m for m in x)


def _prompt_rows(model: "Model", inputs: Any, chat: bool | None) -> list[torch.Tensor]:
    """Unpadded prompt ids, one tensor per prompt."""
    if chat not in (None, True, False):
        raise InputError(f"chat must be True, False or None, got {chat!r}")
    if _is_token_input(inputs):
        if chat:
            raise InputError("chat=True needs text or conversations, not token ids")
        batch = model.tokenize(inputs)
        return [row[m.bool()] for row, m in zip(batch.input_ids, batch.attention_mask)]
    if isinstance(inputs, str) or _is_conversation(inputs):
        inputs = [inputs]
    prompts = list(inputs)
    if not prompts:
        raise InputError("no inputs: got an empty list of prompts")
    conversations = [_is_conversation(p) for p in prompts]
    use_chat = chat if chat is not None else any(conversations)
    if not use_chat:
        if any(conversations):
            raise InputError("chat=False but a prompt is a conversation (a list of role/content messages)")
        batch = model.tokenize(prompts, padding_side="left")
        return [row[m.bool()] for row, m in zip(batch.input_ids, batch.attention_mask)]
    tok = model.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise InputError(f"chat=True but the tokenizer of model {model.name!r} has no chat template")
    rows = []
    for p in prompts:
        if not isinstance(p, str) and not _is_conversation(p):
            raise InputError(f"a chat prompt must be a string or a list of role/content messages, got {p!r}")
        messages = p if _is_conversation(p) else [{"role": "user", "content": p}]
        text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if ids.numel() == 0:
            raise InputError(f"prompt {p!r} tokenises to no tokens")
        rows.append(ids)
    return rows


def _is_token_input(inputs: Any) -> bool:
    from conceptkit.data import is_token_input

    return is_token_input(inputs)


def _left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(r.numel()) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.numel() :] = r
        mask[i, width - r.numel() :] = 1
    return ids, mask


# -- one batch ---------------------------------------------------------------------------------
@dataclass
class _Item:
    """An intervention with the rows it may touch: its own positions, a scope, a row subset."""

    intervention: Any
    scope: str  # "all" | "new" | "prompt" | "last_row"
    rows: torch.Tensor | None = None


def _normalise_policy_output(out: Any, batch_size: int) -> list[RowScoped]:
    if out is None:
        return []
    if not isinstance(out, (list, tuple)):
        raise InputError(f"a policy's step must return a list of interventions, got {type(out).__name__}")
    items = []
    for entry in out:
        rows = None
        if isinstance(entry, RowScoped):
            entry, rows = entry.intervention, entry.rows
        elif isinstance(entry, tuple) and len(entry) == 2:
            entry, rows = entry
        intervention = iv.parse(entry)
        if rows is not None:
            rows = torch.as_tensor(rows).bool().reshape(-1)
            if rows.numel() != batch_size:
                raise InputError(f"a policy's rows mask has {rows.numel()} entries but the batch has {batch_size} rows")
        items.append(RowScoped(intervention, rows))
    return items


def _same(a: list[RowScoped], b: list[RowScoped]) -> bool:
    """Whether two policy decisions are the same interventions on the same rows."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x.rows is None) != (y.rows is None) or (x.rows is not None and not torch.equal(x.rows, y.rows)):  # type: ignore[arg-type]
            return False
        if x.intervention is y.intervention:
            continue
        if type(x.intervention) is not type(y.intervention):
            return False
        for name in type(x.intervention).model_fields:
            u, v = getattr(x.intervention, name), getattr(y.intervention, name)
            if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
                if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.shape == v.shape and torch.equal(u, v)):
                    return False
            elif u != v:
                return False
    return True


class _BatchRun:
    """Generates one left-padded batch; owns the hooks of that batch."""

    def __init__(self, model: "Model", ids: torch.Tensor, mask: torch.Tensor, fixed: list[Any], scope: Scope,
                 policy: Any, examples: list[int], use_cache: bool, plans: bool = False) -> None:
        self.model = model
        self.plans = plans  # run each forward as a Plan through model.execute (no hooks, no cache)
        self.ids, self.mask = ids, mask
        self.B, self.T0 = ids.shape
        self.prompt_len = mask.sum(1)
        self.examples = examples
        self.policy = policy
        self.use_cache = use_cache
        self.fixed = [_Item(x, scope) for x in fixed]
        self.policy_items: list[_Item] = []
        self.by_site: dict[str, list[_Item]] = {}
        self.read_sites = [model.resolve_site(s) for s in (getattr(policy, "reads", ()) or ())] if policy else []
        self.captured: dict[str, torch.Tensor] = {}
        self.group = HandleGroup(description="generation hooks")
        self._masks: dict[int, torch.Tensor] = {}
        self.chunk_pos = self.chunk_mask = self.cur_len = torch.empty(0)
        self.replayed: list[tuple[Any, list[int]]] = []  # plans: earlier "last" policy decisions and their rows

    # hooks ----------------------------------------------------------------------------------
    def _ensure_site(self, site: str) -> None:
        if site in self.by_site:
            return
        self.by_site[site] = []
        items = self.by_site[site]

        pattern = is_pattern_site(site)

        def hook(x: torch.Tensor) -> torch.Tensor | None:
            if not items:
                return None
            out = x.transpose(1, 2) if pattern else x  # [B, H, Tq, Tk]: rows are queries
            for item in items:
                out = item.intervention.apply(out, self._rows(item, out))
            return out.transpose(1, 2) if pattern else out

        self.group.add(self.model.add_hook(site, hook))

    def install(self) -> None:
        if self.plans:
            return
        for item in self.fixed:
            self._ensure_site(item.intervention.site)
            self.by_site[item.intervention.site].append(item)
        for site in self.read_sites:
            self._ensure_site(site)  # interventions there run first: reads see what the model sees

            def read(x: torch.Tensor, site: str = site) -> None:
                self.captured[site] = x.detach().clone()

            self.group.add(self.model.add_hook(site, read))

    def set_policy_items(self, items: list[RowScoped]) -> None:
        for old in [] if self.plans else self.policy_items:
            self.by_site[old.intervention.site].remove(old)
        scope = {"last": "last_row", "new": "new", "all": "all"}[self.policy.positions]
        self.policy_items = [_Item(r.intervention, scope, r.rows) for r in items]
        for item in [] if self.plans else self.policy_items:
            self._ensure_site(item.intervention.site)
            self.by_site[item.intervention.site].append(item)

    def _rows(self, item: _Item, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, T_chunk]`` rows of this forward that ``item`` touches."""
        chunk_shape = tuple(self.chunk_mask.shape)
        if x.dim() < 2 or tuple(x.shape[:2]) != chunk_shape:
            everything = item.intervention.positions == "all" and item.scope == "all" and item.rows is None
            if not everything:
                raise InputError(
                    f"intervention at {item.intervention.site!r}: the site's activations {tuple(x.shape)} have no "
                    f"[batch, token] layout {chunk_shape}, so only positions='all' on every row can apply there"
                )
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        key = id(item)
        if key not in self._masks:
            self._masks[key] = self._compute_rows(item).to(x.device)
        return self._masks[key]

    def _compute_rows(self, item: _Item) -> torch.Tensor:
        pos, real = self.chunk_pos, self.chunk_mask
        plen = self.prompt_len.unsqueeze(1)
        own = item.intervention.positions
        if own == "all":
            m = real
        elif own == "first":
            m = real & (pos == 0)
        elif own == "last":
            m = real & (pos >= plen - 1)
        else:
            m = torch.zeros_like(real)
            for p in own:
                target = torch.full_like(plen, p) if p >= 0 else plen + p
                m |= real & (pos == target)
        if item.scope == "new":
            m = m & (pos >= plen)
        elif item.scope == "prompt":
            m = m & (pos < plen)
        elif item.scope == "last_row":
            m = m & (pos == self.cur_len.unsqueeze(1) - 1)
        if item.rows is not None:
            m = m & item.rows.to(m.device).unsqueeze(1)
        return m

    # forward ---------------------------------------------------------------------------------
    def forward(self, start: int, past: Any) -> tuple[torch.Tensor, Any]:
        """Run columns ``start:`` of the sequence; return last-column logits and the cache."""
        positions = (self.mask.cumsum(1) - 1).clamp_min(0)
        self.chunk_pos = positions[:, start:]
        self.chunk_mask = self.mask[:, start:].bool()
        self.cur_len = self.mask.sum(1)
        self._masks = {}
        self.captured = {}
        ids, pos = self.ids[:, start:], positions[:, start:]
        if self.plans:
            return self._execute_plan(), None
        if self.use_cache:
            logits, past = self.model._forward_cached(ids, self.mask, pos, past)
        else:
            from conceptkit.data import Batch

            logits = self.model._forward(Batch(self.ids, self.mask, "left"))
        return logits[:, -1, :].float(), past

    def _execute_plan(self) -> torch.Tensor:
        """One full forward as a :class:`~conceptkit.plans.Plan` (one unpadded prompt): each
        intervention's rows become explicit positions, reads come back unreduced. A policy's
        ``"last"`` decisions are replayed at the rows they acted on (``self.replayed``), so the
        recomputed prefix is what a KV cache would hold and the tokens equal cached generation."""
        from conceptkit.data import Batch
        from conceptkit.plans import Plan, Read

        ivs, newest = [], []
        for item in self.fixed + self.policy_items:
            whole = item.intervention.positions == "all" and item.scope == "all" and item.rows is None
            if whole:
                ivs.append(item.intervention)
                continue
            cols = self._compute_rows(item)[0].nonzero().flatten().tolist()
            if cols:
                ivs.append(item.intervention.model_copy(update={"positions": cols}))
                if item.scope == "last_row":
                    newest.append((item.intervention, cols))
        ivs += [src.model_copy(update={"positions": cols}) for src, cols in self.replayed]
        for src, cols in newest:  # the same decision as the last one replayed: one intervention, more rows
            last = self.replayed[-1] if self.replayed else None
            if last is not None and _same([RowScoped(last[0])], [RowScoped(src)]):
                self.replayed[-1] = (last[0], last[1] + cols)
            else:
                self.replayed.append((src, cols))
        plan = Plan(Batch(self.ids, self.mask, "left"), reads=[Read(s, "all") for s in self.read_sites], interventions=ivs, output="logits")
        out = self.model.execute(plan)
        self.captured = {s: t.unsqueeze(0) for s, t in out.reads.items()}
        return out.output[:, -1, :].float()  # type: ignore[index]


def _executes_plans_only(model: "Model") -> bool:
    """A backend that overrides ``execute`` and has no KV cache of its own runs plans."""
    from conceptkit.backends.base import Model

    declared = getattr(model, "executes_plans", None)  # a backend that chooses per instance (nnsight: trace or hooks)
    if declared is not None:
        return bool(declared)
    overrides = getattr(type(model), "execute", None) is not getattr(Model, "execute", None)
    cached = getattr(type(model), "_forward_cached", None) is not getattr(Model, "_forward_cached", None)
    return overrides and not cached


def _newest(site: str, t: torch.Tensor, chunk: torch.Size) -> torch.Tensor:
    """A read at each row's newest token (the chunk's last column; a pattern's last query)."""
    if is_pattern_site(site):
        return t[:, :, -1]
    return t[:, -1] if t.dim() >= 2 and tuple(t.shape[:2]) == tuple(chunk) else t


def _cache_length(past: Any) -> int | None:
    fn = getattr(past, "get_seq_length", None)
    return int(fn()) if callable(fn) else None


def _crop(past: Any, length: int) -> Any:
    crop, n = getattr(past, "crop", None), _cache_length(past)
    if not callable(crop) or n is None:
        return None  # cannot crop: recompute from scratch
    if n > length:
        crop(length - n)  # a negative count removes that many tokens (transformers 4.x and 5.x alike)
    return past


def _generate_batch(run: _BatchRun, sampler: _Sampler, max_new_tokens: int, eos: list[int], return_steps: bool,
                    records: list[StepRecord]) -> list[torch.Tensor]:
    model, policy = run.model, run.policy
    B = run.B
    finished = torch.zeros(B, dtype=torch.bool)
    new_tokens: list[torch.Tensor] = []
    eos_t = torch.tensor(eos, dtype=torch.long) if eos else None
    filler = eos[0] if eos else 0
    past: Any = None
    start = 0
    under: list[RowScoped] = []  # the policy interventions cached "new"/"all" rows were computed under
    input_token: torch.Tensor | None = None
    recomputed: int | None = None
    if policy is not None:
        policy.start(run.ids.clone(), run.mask.clone())
    for step in range(max_new_tokens):
        applied = [RowScoped(i.intervention, None) for i in run.fixed] + [RowScoped(i.intervention, i.rows) for i in run.policy_items]
        try:
            logits, past = run.forward(start, past)
        except NotImplementedError:
            if not run.use_cache or step > 0:
                raise
            run.use_cache = False  # the backend has no KV cache: recompute every step
            logits, past = run.forward(0, None)
        if run.use_cache and step == 0:
            n = _cache_length(past)
            if past is None or (n is not None and n != run.ids.shape[1]):
                # The backend returned no usable cache (e.g. a bridge that does not fill it).
                run.use_cache = False
        nxt = sampler(logits).cpu()
        if eos_t is not None:
            nxt = torch.where(finished, torch.full_like(nxt, filler), nxt)
        reads = {s: _newest(s, t, run.chunk_mask.shape) for s, t in run.captured.items()}
        decision: list[RowScoped] = []
        if policy is not None:
            state = StepState(
                step=step, token_ids=run.ids, attention_mask=run.mask, new_token=input_token, reads=reads,
                all_reads=dict(run.captured), chunk_mask=run.chunk_mask, prompt_lengths=run.prompt_len,
                finished=finished.clone(), examples=run.examples,
            )
            decision = _normalise_policy_output(policy.step(state), B)
        if return_steps:
            records.append(StepRecord(
                step=step, examples=run.examples, input_token=input_token, next_token=nxt.clone(),
                reads={s: t.detach().float().cpu() for s, t in reads.items()}, applied=applied, recomputed_from=recomputed,
            ))
        new_tokens.append(nxt)
        if eos_t is not None:
            finished |= torch.isin(nxt, eos_t)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        # the next forward: the sampled token, under the policy's decision
        run.ids = torch.cat([run.ids, nxt.unsqueeze(1)], 1)
        run.mask = torch.cat([run.mask, torch.ones(B, 1, dtype=run.mask.dtype)], 1)
        input_token = nxt
        if policy is not None:
            run.set_policy_items(decision)
        recomputed = None
        start = run.ids.shape[1] - 1
        if not run.use_cache:
            start, past = 0, None
        elif policy is not None and policy.positions in ("new", "all") and not _same(decision, under):
            # cached rows were computed under other interventions: recompute the rows in scope
            if policy.positions == "all":
                past, start = None, 0
            else:
                past = _crop(past, run.T0)
                start = run.T0 if past is not None else 0
            recomputed = start
            under = decision
    return new_tokens


def generate(
    model: "Model",
    inputs: Any,
    interventions: Sequence[Any] = (),
    *,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    policy: GenerationPolicy | None = None,
    chat: bool | None = None,
    positions: Scope = "all",
    return_steps: bool = False,
    batch_size: int = 8,
    use_cache: bool = True,
) -> Generation:
    """Generate continuations; see the module docs for positions, policies and chat."""
    _check_count("max_new_tokens", max_new_tokens)
    _check_count("batch_size", batch_size)
    sampler = _Sampler.checked(temperature, top_k, top_p, seed)
    if positions not in ("all", "new", "prompt"):
        raise InputError(f"positions must be 'all', 'new' or 'prompt', got {positions!r}")
    if policy is not None:
        if not callable(getattr(policy, "step", None)):
            raise InputError(f"policy must be a GenerationPolicy (with a step method), got {type(policy).__name__}")
        if getattr(policy, "positions", "last") not in ("last", "new", "all"):
            raise InputError(f"policy.positions must be 'last', 'new' or 'all', got {policy.positions!r}")
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer to decode with")
    if getattr(model, "is_encoder", False):
        raise InputError(f"model {model.name!r} is an encoder; generation needs a causal language model")
    fixed = iv.parse_all(interventions)
    for item in fixed:
        model.resolve_site(item.site)
    rows = _prompt_rows(model, inputs, chat)
    shortest = min(int(r.numel()) for r in rows)
    for item in fixed:
        if isinstance(item.positions, list):
            for p in item.positions:
                if (p < 0 and -p > shortest) or p >= shortest + max_new_tokens:
                    raise InputError(
                        f"intervention at {item.site!r}: token position {p} is out of range for a prompt of {shortest} "
                        f"tokens plus max_new_tokens={max_new_tokens} (negative positions count from the prompt's end)"
                    )
    limit = _context_length(model)
    if limit is not None:
        longest = max(int(r.numel()) for r in rows)
        if longest + max_new_tokens > limit:
            raise InputError(
                f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the context of "
                f"model {model.name!r} ({limit} positions)"
            )
    tok = model.tokenizer
    eos_id = tok.eos_token_id
    eos = [eos_id] if isinstance(eos_id, int) else list(eos_id or [])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    records: list[StepRecord] = []
    token_ids: list[torch.Tensor] = []
    plans = _executes_plans_only(model)
    # An executor that generates itself (the nnsight trace executor: nnsight's own generate)
    # takes fixed interventions; a policy, return_steps or use_cache=False run one plan per step.
    native = getattr(model, "native_generation", None) if plans and policy is None and not return_steps and use_cache else None
    if plans and native is None:  # one prompt per plan, so every intervention's rows are plain positions
        batch_size, use_cache = 1, False
    settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    with torch.inference_mode():
        for begin in range(0, len(rows), batch_size):
            chunk = rows[begin : begin + batch_size]
            ids, mask = _left_pad(chunk, pad_id)
            run = _BatchRun(model, ids, mask, fixed, positions, policy, list(range(begin, begin + len(chunk))), use_cache, plans)
            if native is not None:
                generated = native(run, settings, max_new_tokens, eos, pad_id)
            else:
                try:
                    run.install()
                    new = _generate_batch(run, sampler, max_new_tokens, eos, return_steps, records)
                finally:
                    run.group.remove()
                generated = torch.stack(new, 1)
            for row in generated:
                hits = torch.isin(row, torch.tensor(eos)).nonzero() if eos else torch.empty(0)
                token_ids.append(row[: int(hits[0]) + 1].clone() if len(hits) else row.clone())
    texts = tok.batch_decode([t.tolist() for t in token_ids], skip_special_tokens=True)
    return Generation(texts, token_ids, rows, records if return_steps else None)
