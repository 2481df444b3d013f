"""Generation: KV cache vs recompute, policies vs hand-written loops, batching, EOS, leaks, errors."""

from __future__ import annotations

import math

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit.errors import InputError, UnknownNameError
from conceptkit.generation import Generation, GenerationPolicy, RowScoped, StepState
from conceptkit.testing import assert_no_hook_leak

PROMPTS = ["hello world", "hi", "a much longer prompt here"]
SITE = "blocks.0.hook_resid_post"
READ = "blocks.1.hook_resid_post"
BACKENDS = ["transformer_lens", "nnsight"]


def _vector(scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed)) * scale


class Reader(GenerationPolicy):
    """Reads one site, changes nothing."""

    reads = [READ]

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def step(self, state: StepState) -> list:
        self.seen.append(state.reads[READ].clone())
        return []


class AfterToken(GenerationPolicy):
    """Adds a vector to every token computed after ``token`` was consumed (per row)."""

    reads = [READ]

    def __init__(self, token: int, vector: torch.Tensor, positions: str = "last") -> None:
        self.token, self.vector, self.positions = token, vector, positions

    def start(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.seen = torch.zeros(len(prompt_ids), dtype=torch.bool)

    def step(self, state: StepState) -> list:
        if state.new_token is not None:
            self.seen |= state.new_token == self.token
        if not self.seen.any():
            return []
        return [RowScoped(iv.Add(site=SITE, vector=self.vector), self.seen.clone())]


def _hand_loop(model, prompt: str, token: int, vector: torch.Tensor, n: int) -> list[int]:
    """The AfterToken policy written as full forwards, one token at a time."""
    ids = model.tokenize([prompt]).input_ids[0].tolist()
    steer_from = None
    out = []
    for _ in range(n):
        ivs = [iv.Add(site=SITE, vector=vector, positions=list(range(steer_from, len(ids))))] if steer_from is not None and steer_from < len(ids) else []
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        nxt = int(model.run(batch, ivs, reduce="last")[0].argmax())
        if steer_from is None and nxt == token:
            steer_from = len(ids) + 1  # the row after the token's own row
        ids.append(nxt)
        out.append(nxt)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_generation_equals_recomputed_with_add_at_all_positions(models, backend):
    """With the KV cache, an Add at all positions gives the same tokens and reads (<= 1e-5) as full recompute."""
    model = models("tiny-llama", backend)
    add = iv.Add(site=SITE, vector=_vector(0.5))
    runs = {}
    for use_cache in (True, False):
        policy = Reader()
        gen = model.generate(PROMPTS, [add], max_new_tokens=8, policy=policy, use_cache=use_cache)
        runs[use_cache] = (gen, policy.seen)
    (cached, r1), (full, r2) = runs[True], runs[False]
    assert [t.tolist() for t in cached.token_ids] == [t.tolist() for t in full.token_ids]
    assert len(r1) == len(r2) == 8
    assert max(float((a - b).abs().max()) for a, b in zip(r1, r2)) <= 1e-5
    assert cached != model.generate(PROMPTS, max_new_tokens=8)  # the vector does steer


@pytest.mark.parametrize("positions", ["last", "first", [0, -1, 5]])
def test_position_semantics_do_not_depend_on_the_cache(models, positions):
    """'last', 'first' and listed positions select the same rows with and without the cache."""
    model = models("tiny-llama", "transformer_lens")
    add = iv.Add(site=SITE, vector=_vector(2.0), positions=positions)
    a = model.generate(PROMPTS, [add], max_new_tokens=6)
    b = model.generate(PROMPTS, [add], max_new_tokens=6, use_cache=False)
    assert [t.tolist() for t in a.token_ids] == [t.tolist() for t in b.token_ids]


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_after_a_token_equals_a_hand_written_loop(models, backend):
    """A policy adding a vector once a token has appeared equals a step-by-step loop of full forwards, exactly."""
    model = models("tiny-llama", backend)
    n = 10
    plain = model.generate(PROMPTS[:2], max_new_tokens=n)
    token = int(plain.token_ids[0][2])  # appears in the first row's continuation
    vector = _vector(3.0, seed=1)
    steered = model.generate(PROMPTS[:2], max_new_tokens=n, policy=AfterToken(token, vector))
    assert steered.token_ids[0].tolist() != plain.token_ids[0].tolist()
    for i, prompt in enumerate(PROMPTS[:2]):
        assert steered.token_ids[i].tolist() == _hand_loop(model, prompt, token, vector, n)


@pytest.mark.parametrize("positions", ["new", "all"])
def test_policy_new_and_all_positions_recompute_rows_like_full_forwards(models, positions):
    """A 'new'/'all' policy whose decision changes gives what full recompute gives (tokens equal, reads <= 1e-5)."""
    model = models("tiny-llama", "transformer_lens")
    token = int(model.generate(PROMPTS[:1], max_new_tokens=4).token_ids[0][1])
    results = []
    for use_cache in (True, False):
        policy = AfterToken(token, _vector(3.0, seed=1), positions=positions)
        reads = []
        original = policy.step

        def recording(state, original=original, reads=reads):
            reads.append(state.reads[READ].clone())
            return original(state)

        policy.step = recording
        gen = model.generate(PROMPTS[:2], max_new_tokens=8, policy=policy, use_cache=use_cache, return_steps=True)
        results.append((gen, reads))
    (a, ra), (b, rb) = results
    assert [t.tolist() for t in a.token_ids] == [t.tolist() for t in b.token_ids]
    assert max(float((x - y).abs().max()) for x, y in zip(ra, rb)) <= 1e-5
    assert any(s.recomputed_from is not None for s in a.steps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_batched_generation_equals_one_by_one(models, backend, name):
    """Greedy generation of a left-padded batch equals generating each prompt alone (with a steering Add)."""
    model = models(name, backend)
    add = iv.Add(site=SITE, vector=_vector(0.3), positions="last")
    batched = model.generate(PROMPTS, [add], max_new_tokens=8, batch_size=3)
    alone = [model.generate([p], [add], max_new_tokens=8) for p in PROMPTS]
    assert [t.tolist() for t in batched.token_ids] == [g.token_ids[0].tolist() for g in alone]
    assert list(batched) == [g[0] for g in alone]


def test_hooks_never_leak_also_when_the_policy_raises(models):
    """Generation leaves the hook registry as it found it, after success and after a failing policy."""

    class Boom(GenerationPolicy):
        reads = [READ]

        def step(self, state):
            if state.step == 2:
                raise RuntimeError("policy failed")
            return [iv.Add(site="blocks.1.hook_resid_pre", vector=_vector())]

    for backend in BACKENDS:
        model = models("tiny-llama", backend)
        with assert_no_hook_leak(model):
            model.generate(PROMPTS, [iv.Add(site=SITE, vector=_vector())], max_new_tokens=4, policy=Reader())
            with pytest.raises(RuntimeError, match="policy failed"):
                model.generate(PROMPTS, max_new_tokens=6, policy=Boom())
            with pytest.raises(UnknownNameError):
                model.generate(PROMPTS, max_new_tokens=3, policy=type("P", (GenerationPolicy,), {"reads": ["nope"]})())


def test_eos_ends_a_row_and_is_kept_in_its_ids_only(models):
    """A row that emits EOS stops there (EOS kept in token_ids, not in the text); others go on."""
    model = models("tiny-llama", "nnsight")
    eos = model.tokenizer.eos_token_id
    push = model.weights.W_U[:, eos] * 100

    class EndRowZero(GenerationPolicy):
        def step(self, state):
            if state.step == 1:
                return [RowScoped(iv.Add(site="blocks.1.hook_resid_post", vector=push), torch.tensor([True, False]))]
            return []

    gen = model.generate(PROMPTS[:2], max_new_tokens=6, policy=EndRowZero())
    assert gen.token_ids[0].tolist()[-1] == eos and len(gen.token_ids[0]) == 3
    assert len(gen.token_ids[1]) == 6 and eos not in gen.token_ids[1].tolist()
    assert gen[0] == model.tokenizer.decode(gen.token_ids[0][:-1])

    class EndAll(GenerationPolicy):
        def step(self, state):
            return [iv.Add(site="blocks.1.hook_resid_post", vector=push)]

    ended = model.generate(PROMPTS[:2], max_new_tokens=6, policy=EndAll(), return_steps=True)
    assert [len(t) for t in ended.token_ids] == [2, 2] and len(ended.steps) == 2


def test_generation_is_a_list_of_texts_with_ids_and_steps(models):
    """The result is a list[str] carrying prompt ids, new ids and per-step records of reads and interventions."""
    model = models("tiny-llama", "transformer_lens")
    add = iv.Add(site=SITE, vector=_vector())
    gen = model.generate(PROMPTS, [add], max_new_tokens=4, policy=Reader(), return_steps=True, batch_size=2)
    assert isinstance(gen, Generation) and isinstance(gen, list) and all(isinstance(t, str) for t in gen)
    assert gen == list(gen) and len(gen.token_ids) == len(gen.prompt_ids) == 3
    assert gen.prompt_ids[1].tolist() == model.tokenize(["hi"]).input_ids[0].tolist()
    assert len(gen.steps) == 8  # two batches x four forwards
    first = gen.steps[0]
    assert first.step == 0 and first.input_token is None and first.examples == [0, 1]
    assert first.reads[READ].shape == (2, 64) and first.applied[0].intervention is add
    assert torch.equal(gen.steps[1].input_token, first.next_token)
    assert gen.steps[4].examples == [2]
    assert model.generate(PROMPTS, max_new_tokens=2).steps is None


def test_sampling_is_seeded_and_matches_hf_generate(models):
    """Temperature/top-k/top-p sampling is reproducible with a seed and draws what HF generate draws."""
    model = models("tiny-llama", "transformers")
    settings = dict(temperature=0.8, top_k=20, top_p=0.9)
    a = model.generate(PROMPTS, max_new_tokens=8, seed=3, **settings)
    assert [t.tolist() for t in a.token_ids] == [t.tolist() for t in model.generate(PROMPTS, max_new_tokens=8, seed=3, **settings).token_ids]
    assert a != model.generate(PROMPTS, max_new_tokens=8, seed=4, **settings)
    batch = model.tokenize(PROMPTS, padding_side="left")
    torch.manual_seed(3)
    out = model.hf.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True, max_new_tokens=8,
        pad_token_id=model.tokenizer.pad_token_id, **settings,
    )[:, batch.input_ids.shape[1] :]
    eos = model.tokenizer.eos_token_id
    for ours, theirs in zip(a.token_ids, out.tolist()):
        theirs = theirs[: theirs.index(eos) + 1] if eos in theirs else theirs
        assert ours.tolist() == theirs


def test_greedy_steering_matches_hf_generate_with_the_same_hook(models):
    """A fixed Add at a layer's output equals HF generate with a forward hook adding the same vector."""
    model = models("tiny-llama", "transformers")
    vector = _vector(0.5)
    ours = model.generate(PROMPTS, [iv.Add(site=SITE, vector=vector)], max_new_tokens=8)
    layer = model.hf.model.layers[0]
    handle = layer.register_forward_hook(lambda mod, args, out: out + vector if isinstance(out, torch.Tensor) else (out[0] + vector, *out[1:]))
    try:
        batch = model.tokenize(PROMPTS, padding_side="left")
        out = model.hf.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False, max_new_tokens=8,
            pad_token_id=model.tokenizer.pad_token_id,
        )[:, batch.input_ids.shape[1] :]
    finally:
        handle.remove()
    assert [t.tolist() for t in ours.token_ids] == out.tolist()


def test_models_without_a_kv_cache_recompute(models):
    """A TransformerLens-native model (no HF cache) generates by recomputation, with the same results."""
    model = models("tiny-tl-native", "transformer_lens")
    add = iv.Add(site=SITE, vector=_vector(), positions="last")
    with assert_no_hook_leak(model):
        a = model.generate(PROMPTS, [add], max_new_tokens=5)
    assert list(a) == list(model.generate(PROMPTS, [add], max_new_tokens=5, use_cache=False))


def test_chat_template_is_applied_only_when_asked(models):
    """chat=True (or a conversation) applies the tokenizer's template; plain strings stay raw by default."""
    model = models("tiny-llama", "transformer_lens")
    tok = model.tokenizer
    with pytest.raises(InputError, match="no chat template"):
        model.generate(["hi"], max_new_tokens=2, chat=True)
    old = tok.chat_template
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    try:
        templated = model.generate(["hi"], max_new_tokens=3, chat=True)
        assert tok.decode(templated.prompt_ids[0]) == "<user>hi<a>"
        convo = model.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=3)
        assert convo.prompt_ids[0].tolist() == templated.prompt_ids[0].tolist() and list(convo) == list(templated)
        assert tok.decode(model.generate(["hi"], max_new_tokens=1).prompt_ids[0]) == "hi"
        with pytest.raises(InputError, match="chat=False"):
            model.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=1, chat=False)
    finally:
        tok.chat_template = old


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"temperature": math.nan}, "got nan"),
        ({"top_k": 5}, "needs temperature > 0"),
        ({"temperature": 1.0, "top_k": 0}, "top_k must be an integer >= 1"),
        ({"temperature": 1.0, "top_p": math.inf}, r"top_p must be a finite number in \(0, 1\]"),
        ({"temperature": 1.0, "top_p": 0.0}, r"in \(0, 1\] or None, got 0.0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"positions": "middle"}, "positions must be 'all', 'new' or 'prompt'"),
        ({"max_new_tokens": 200}, r"exceeds the context .* \(128 positions\)"),
        ({"interventions": [iv.Add(site=SITE, vector=torch.ones(64), positions=[-3])]}, "position -3 is out of range for a prompt of 2"),
        ({"policy": type("Bad", (GenerationPolicy,), {"positions": "everywhere"})()}, "policy.positions must be"),
    ],
)
def test_bad_generation_settings_raise_errors_naming_the_value(models, kwargs, message):
    """Invalid counts, temperatures, top-k/top-p, scopes and over-long requests are refused before any compute."""
    model = models("tiny-llama", "transformer_lens")
    with pytest.raises(InputError, match=message):
        model.generate(["hi"], **{"max_new_tokens": 2, **kwargs})


def test_generation_scope_new_leaves_the_prompt_unsteered(models):
    """positions='new' applies fixed interventions to generated rows only; 'prompt' to prompt rows only."""
    model = models("tiny-llama", "transformer_lens")
    add = iv.Add(site=SITE, vector=_vector(3.0))
    plain = Reader()
    model.generate(PROMPTS, max_new_tokens=3, policy=plain)
    new = Reader()
    model.generate(PROMPTS, [add], max_new_tokens=3, policy=new, positions="new")
    assert torch.equal(new.seen[0], plain.seen[0])  # the prefill is untouched
    assert not torch.equal(new.seen[1], plain.seen[1])
    prompt_only = Reader()
    model.generate(PROMPTS, [add], max_new_tokens=3, policy=prompt_only, positions="prompt")
    assert not torch.equal(prompt_only.seen[0], plain.seen[0])


def test_the_plugin_author_guide_policy_example_runs(capsys):
    """The policy example in docs/plugin-authors.md runs as written and steers only after its token."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "plugin-authors.md").read_text()
    section = text.split("## 7. Generation policies", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "plugin-authors.md", "exec"), namespace)
    out, policy = namespace["out"], namespace["policy"]
    assert len(out) == 2 and len(out.steps) == 8 and len(policy.norms) == 8
    assert [len(r.applied) for r in out.steps][:2] == [0, 0] and len(out.steps[-1].applied) == 1
    assert "[" in capsys.readouterr().out


def test_interventions_on_attention_patterns_follow_query_rows(models):
    """An intervention at attn.hook_pattern acts on query rows, the same with and without the cache."""
    model = models("tiny-llama", "transformer_lens")
    site = "blocks.0.attn.hook_pattern"
    assert site in model.sites()
    scale = iv.Scale(site=site, factor=0.2, positions="last")
    a = model.generate(PROMPTS, [scale], max_new_tokens=5)
    b = model.generate(PROMPTS, [scale], max_new_tokens=5, use_cache=False)
    assert [t.tolist() for t in a.token_ids] == [t.tolist() for t in b.token_ids]
    reader = type("R", (GenerationPolicy,), {"reads": [site]})()
    steps = model.generate(PROMPTS[:2], max_new_tokens=2, policy=reader, return_steps=True).steps
    assert steps[0].reads[site].shape[:2] == (2, 4) and steps[1].reads[site].shape[:2] == (2, 4)


class _Digits:
    """A tokenizer stand-in for the toy models of test_plans (ids are their own text)."""

    eos_token_id = None
    pad_token_id = 0
    chat_template = None

    def batch_decode(self, rows, skip_special_tokens=True):  # type: ignore[no-untyped-def]
        return [" ".join(str(i) for i in row) for row in rows]


def test_a_backend_that_only_executes_plans_generates_like_the_hook_engine():
    """Generation through Model.execute (one plan per step) equals the hook engine on the same network."""
    from tests.test_plans import HookedModel, Net, PlannedModel

    net = Net()
    hooked, planned = HookedModel(net, "hooked"), PlannedModel(net)
    hooked.tokenizer = planned.tokenizer = _Digits()
    ids = {"input_ids": torch.tensor([[0, 5, 7, 9], [0, 0, 3, 4]]), "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])}
    v = torch.randn(8, generator=torch.Generator().manual_seed(0)) * 3
    fixed = [iv.Add(site="blocks.0.hook_resid_post", vector=v, positions="last")]

    class Steer(GenerationPolicy):
        reads = ["blocks.1.hook_resid_post"]
        positions = "new"

        def step(self, state):
            first = torch.tensor([e == 0 for e in state.examples])  # plans run one prompt at a time
            return [RowScoped(iv.Scale(site="blocks.1.hook_resid_post", factor=0.5), first)] if state.step >= 2 else []

    a = hooked.generate(ids, fixed, max_new_tokens=6, policy=Steer(), return_steps=True, use_cache=False)
    b = planned.generate(ids, fixed, max_new_tokens=6, policy=Steer(), return_steps=True)
    assert [t.tolist() for t in a.token_ids] == [t.tolist() for t in b.token_ids] and list(a) == list(b)
    assert len(planned.plans) == 12  # one plan per step and prompt
    reads_a = torch.stack([r.reads["blocks.1.hook_resid_post"] for r in a.steps], 1)  # [prompt, step, d]
    reads_b = torch.stack([r.reads["blocks.1.hook_resid_post"][0] for r in b.steps]).reshape(reads_a.shape)
    assert (reads_a - reads_b).abs().max() <= 1e-5
