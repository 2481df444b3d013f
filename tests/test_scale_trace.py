"""The nnsight trace executor (plans compiled into nn_model.trace, remote="local") vs the hook executor."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import CapabilityError
from conceptkit.generation import GenerationPolicy, RowScoped
from conceptkit.interventions import Add, Affine, ProjectOut, Replace, Scale

TEXTS = ["the cat sat on the mat", "a dog ran", "birds fly south in winter"]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]


@pytest.fixture(scope="module")
def models():
    m = ck.load_model("tiny-gpt2", backend="nnsight")
    return m, m.with_executor("trace", remote="local")


def test_capture_every_reduction_equals_hooks(models) -> None:
    """capture under remote="local" equals the hook executor for last/first/mean/all/positions (≤1e-5)."""
    hooks, trace = models
    for reduce in ("last", "first", "mean", "all", [0, -1]):
        a = hooks.capture(TEXTS, SITES, reduce, batch_size=2)
        b = trace.capture(TEXTS, SITES, reduce, batch_size=2)
        for s in SITES:
            assert torch.allclose(a[s], b[s], atol=1e-5, rtol=0), (reduce, s)
        if reduce == "all":
            assert torch.equal(a.token_index, b.token_index)


def test_run_with_interventions_equals_hooks(models) -> None:
    """run with add/scale/replace/affine/project_out (positions too) under remote="local" equals hooks (≤1e-5)."""
    hooks, trace = models
    g = torch.Generator().manual_seed(0)
    d = hooks.d_model
    ivs = [
        Add(site="blocks.0.hook_resid_post", vector=torch.randn(d, generator=g), coeff=2.0, positions="last"),
        Scale(site="blocks.1.hook_resid_mid", factor=0.5),
        ProjectOut(site="blocks.1.hook_resid_mid", directions=torch.randn(2, d, generator=g)),
        Affine(site="blocks.1.hook_mlp_out", weight=torch.randn(d, d, generator=g) / d**0.5, bias=torch.randn(d, generator=g)),
        Replace(site="blocks.0.hook_attn_out", value=torch.randn(d, generator=g), positions=[0]),
    ]
    a = hooks.run(TEXTS, interventions=ivs, batch_size=2)
    b = trace.run(TEXTS, interventions=ivs, batch_size=2)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    base = hooks.run(TEXTS, batch_size=2)
    assert not torch.allclose(a, base, atol=1e-3)
    ca = hooks.capture(TEXTS, "blocks.1.hook_resid_post", "mean", interventions=ivs[:2])
    cb = trace.capture(TEXTS, "blocks.1.hook_resid_post", "mean", interventions=ivs[:2])
    assert torch.allclose(ca["blocks.1.hook_resid_post"], cb["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)


def test_grad_linear_objectives_equal_hooks(models) -> None:
    """grad of token_logit / logit_diff / logit_functional under remote="local" equals hooks (≤1e-5), interventions too."""
    hooks, trace = models
    site = "blocks.0.hook_resid_post"
    ivs = [Scale(site="blocks.0.hook_attn_out", factor=0.7)]
    for obj in ({"kind": "token_logit", "token": 3}, {"kind": "logit_diff", "positive": 5, "negative": 7},
                {"kind": "logit_functional", "weights": {3: 1.0, 9: -0.5}}):
        for reduce in ("last", "mean"):
            a = hooks.grad(TEXTS, site, obj, reduce=reduce, interventions=ivs, batch_size=2)
            b = trace.grad(TEXTS, site, obj, reduce=reduce, interventions=ivs, batch_size=2)
            a, b = (getattr(a, "grads", a), getattr(b, "grads", b))
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (obj, reduce)


def test_inexpressible_plans_refused_before_sending(models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-linear objectives, callables, view sites and non-nnsight models raise CapabilityError before any trace."""
    import conceptkit.scale.nnsight_trace as nt

    hooks, trace = models

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a trace was sent")

    monkeypatch.setattr(nt, "_trace_body", boom)
    with pytest.raises(CapabilityError, match="objective kind 'loss'"):
        trace.grad(TEXTS[:1], "blocks.0.hook_resid_post", {"kind": "loss"})
    with pytest.raises(CapabilityError, match="Python callable"):
        trace.grad(TEXTS[:1], "blocks.0.hook_resid_post", lambda out, batch: out[:, -1, 0])
    with pytest.raises(CapabilityError, match="view"):
        trace.capture(TEXTS[:1], "blocks.0.attn.hook_pattern")
    with pytest.raises(CapabilityError, match="trace executor needs"):
        nt.TraceExecutor(ck.load_model("tiny-gpt2", backend="transformers"))


def test_hook_executor_stays_default(models) -> None:
    """Loading with backend="nnsight" keeps the hook executor; with_executor("hooks") returns to it."""
    hooks, trace = models
    assert hooks._trace_executor is None and trace._trace_executor is not None
    assert trace.with_executor("hooks")._trace_executor is None


def test_nll_equals_hooks(models) -> None:
    """nll (a logits plan) under remote="local" equals the hook executor, with an intervention too."""
    hooks, trace = models
    iv = [Scale(site="blocks.0.hook_resid_post", factor=1.5)]
    for ivs in ([], iv):
        (a, na), (b, nb) = hooks.nll(TEXTS, ivs, batch_size=2), trace.nll(TEXTS, ivs, batch_size=2)
        assert torch.equal(na, nb) and torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_smollm2_trace_capture_and_run_equal_hooks() -> None:
    """On SmolLM2, remote="local" capture (mean) and run with a steering Add equal the hook executor (≤1e-5),
    and generation with it gives the same token ids."""
    m = ck.load_model("smollm2-135m", backend="nnsight")
    t = m.with_executor("trace", remote="local")
    site = "blocks.9.hook_resid_post"
    a, b = m.capture(TEXTS, site, "mean"), t.capture(TEXTS, site, "mean")
    assert torch.allclose(a[site], b[site], atol=1e-5, rtol=0)
    iv = [Add(site="blocks.3.hook_resid_post", vector=torch.ones(m.d_model), coeff=2.0)]
    assert torch.allclose(m.run(TEXTS, interventions=iv), t.run(TEXTS, interventions=iv), atol=1e-5, rtol=0)
    a, b = m.generate(TEXTS, iv, max_new_tokens=6), t.generate(TEXTS, iv, max_new_tokens=6)  # nnsight's generate
    assert [x.tolist() for x in a.token_ids] == [x.tolist() for x in b.token_ids]


# -- generation ----------------------------------------------------------------------------------
PROMPTS = ["the cat sat", "a dog", "birds fly south in winter"]


def _ids(gen) -> list[list[int]]:  # noqa: ANN001
    return [t.tolist() for t in gen.token_ids]


def _fixed(d: int) -> list:
    g = torch.Generator().manual_seed(1)
    return [
        Add(site="blocks.0.hook_resid_post", vector=torch.randn(d, generator=g) * 3, positions="last"),
        Scale(site="blocks.1.hook_mlp_out", factor=0.3),
        ProjectOut(site="blocks.1.hook_resid_mid", directions=torch.randn(2, d, generator=g), positions=[0, -1, 8]),
        Affine(site="blocks.0.hook_attn_out", weight=torch.randn(d, d, generator=g) / d**0.5, positions="first"),
        Replace(site="blocks.1.hook_attn_out", value=torch.randn(d, generator=g), positions=[-2]),
    ]


def test_generate_fixed_interventions_through_nnsight_generate_equals_hooks(models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed interventions of every kind (positions last/first/lists reaching generated tokens, scopes
    all/new/prompt) through nn_model.generate under remote="local" give the hook executor's token ids,
    greedy and seeded sampling (top-k/top-p), over two batches; no per-step plan is executed."""
    import conceptkit.scale.trace_generate as tg

    hooks, trace = models
    bodies = []
    real = tg._generate_body
    monkeypatch.setattr(tg, "_generate_body", lambda *a, **k: bodies.append(1) or real(*a, **k))
    monkeypatch.setattr(type(trace._trace_executor), "execute", lambda self, plan: pytest.fail("a per-step plan ran"))
    ivs = _fixed(hooks.d_model)
    for kw in ({}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "top_k": 10, "top_p": 0.9, "seed": 5}):
        for scope in ("all", "new", "prompt"):
            a = hooks.generate(PROMPTS, ivs, max_new_tokens=6, batch_size=2, positions=scope, **kw)
            b = trace.generate(PROMPTS, ivs, max_new_tokens=6, batch_size=2, positions=scope, **kw)
            assert _ids(a) == _ids(b) and list(a) == list(b), (kw, scope)
            if scope == "all":
                steered = a
        base = hooks.generate(PROMPTS, max_new_tokens=6, batch_size=2, **kw)
        if not kw:  # greedy: the interventions change the tokens (a near-uniform sampler may not show it)
            assert _ids(base) != _ids(steered)
        assert _ids(base) == _ids(trace.generate(PROMPTS, max_new_tokens=6, batch_size=2, **kw))
    assert len(bodies) == 3 * 4 * 2  # one nnsight generate per batch


def test_generate_fixed_stops_when_every_row_ends(models) -> None:
    """An intervention that makes every row emit EOS at once: nnsight's generate stops after one
    forward (the step loop is cut short) and both executors return [EOS] per prompt."""
    hooks, trace = models
    eos = hooks.tokenizer.eos_token_id
    w_u = hooks.hf.get_output_embeddings().weight.detach()
    push = [Add(site=f"blocks.{hooks.n_layers - 1}.hook_resid_post", vector=w_u[eos] / w_u[eos].norm(), coeff=1e4)]
    a = hooks.generate(PROMPTS, push, max_new_tokens=5)
    b = trace.generate(PROMPTS, push, max_new_tokens=5)
    assert _ids(a) == _ids(b) == [[eos]] * len(PROMPTS)


class _Steer(GenerationPolicy):
    """Reads two sites; its decisions depend on what it read and alternate between steps."""

    reads = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]

    def __init__(self, positions: str, d: int) -> None:
        self.positions = positions
        self.v = torch.randn(d, generator=torch.Generator().manual_seed(2)) * 4

    def step(self, state):  # noqa: ANN001, ANN201
        if state.step % 2 == 1:
            return [Add(site="blocks.0.hook_resid_post", vector=self.v, coeff=1.0)]
        norms = state.reads["blocks.1.hook_resid_post"].norm(dim=-1)  # [B]: each row steered by its own read
        rows = torch.eye(len(norms), dtype=torch.bool)
        return [RowScoped(Add(site="blocks.0.hook_resid_post", vector=self.v, coeff=float(n)), r) for n, r in zip(norms, rows)] + [
            Scale(site="blocks.1.hook_attn_out", factor=0.5)]


def _reads(gen, site: str, n_prompts: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Per prompt, its reads at each step ``[steps, d]`` (batched or one-prompt records alike)."""
    out: list[list[torch.Tensor]] = [[] for _ in range(n_prompts)]
    for rec in gen.steps:
        for row, example in enumerate(rec.examples):
            if rec.next_token is not None:
                out[example].append(rec.reads[site][row])
    return [torch.stack(r) for r in out]


def test_generate_with_policy_one_trace_per_step_equals_hooks(models, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy (positions last/new/all, fixed interventions too) runs one trace per step and prompt
    under remote="local", recomputing the prefix: the same token ids as the hook executor's cached
    generation, and reads within 1e-5; seeded sampling equals the hook executor run prompt by prompt."""
    import conceptkit.scale.nnsight_trace as nt

    hooks, trace = models
    traces = []
    real = nt._trace_body
    monkeypatch.setattr(nt, "_trace_body", lambda *a, **k: traces.append(1) or real(*a, **k))
    fixed = [Scale(site="blocks.0.hook_mlp_out", factor=1.5, positions="last")]
    site = "blocks.1.hook_resid_post"
    for positions in ("last", "new", "all"):
        for kw in ({}, {"temperature": 1.0, "seed": 2, "batch_size": 1}):
            traces.clear()
            a = hooks.generate(PROMPTS, fixed, max_new_tokens=5, policy=_Steer(positions, hooks.d_model), return_steps=True, **kw)
            b = trace.generate(PROMPTS, fixed, max_new_tokens=5, policy=_Steer(positions, hooks.d_model), return_steps=True, **kw)
            assert _ids(a) == _ids(b), (positions, kw)
            assert len(traces) == sum(len(t) for t in b.token_ids)  # one trace per forward and prompt
            for ra, rb in zip(_reads(a, site, 3), _reads(b, site, 3)):
                n = min(len(ra), len(rb))
                assert (ra[:n] - rb[:n]).abs().max() <= 1e-5
        base = hooks.generate(PROMPTS, fixed, max_new_tokens=5)
        assert _ids(base) != _ids(a)  # the policy changes the tokens


def test_generation_refusals_before_anything_is_sent(models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin-like ops, view sites and virtual sites in fixed interventions or policy reads are
    refused with CapabilityError before any trace or generate is sent; a policy decision that
    cannot be expressed is refused before the step that would carry it."""
    import conceptkit.scale.nnsight_trace as nt
    import conceptkit.scale.trace_generate as tg

    hooks, trace = models
    sent = []
    real = nt._trace_body
    monkeypatch.setattr(nt, "_trace_body", lambda *a, **k: sent.append(1) or real(*a, **k))
    monkeypatch.setattr(tg, "_generate_body", lambda *a, **k: pytest.fail("a generate trace was sent"))
    pattern = Scale(site="blocks.0.attn.hook_pattern", factor=0.5)
    with pytest.raises(CapabilityError, match="hook_pattern.*view"):
        trace.generate(PROMPTS, [pattern], max_new_tokens=3)

    class ReadsPattern(GenerationPolicy):
        reads = ["blocks.0.attn.hook_pattern"]

    with pytest.raises(CapabilityError, match="view"):
        trace.generate(PROMPTS, max_new_tokens=3, policy=ReadsPattern())
    assert sent == []

    class LateBadDecision(GenerationPolicy):
        def step(self, state):  # noqa: ANN001, ANN201
            return [pattern] if state.step == 1 else []

    with pytest.raises(CapabilityError, match="view"):
        trace.generate(PROMPTS[:1], max_new_tokens=4, policy=LateBadDecision())
    assert len(sent) == 2  # steps 0 and 1 ran; the step that would carry the bad decision did not


def test_trace_bodies_use_only_torch() -> None:
    """What nnsight ships to a server names no conceptkit code: the bodies' globals are torch only,
    and the generate body applies the same intervention arithmetic as the trace body."""
    import inspect

    import conceptkit.scale.nnsight_trace as nt
    import conceptkit.scale.trace_generate as tg

    for fn in (nt._trace_body, tg._generate_body):
        used = set(fn.__code__.co_names) & set(fn.__globals__)
        assert used <= {"torch"}, (fn.__name__, used)

    def ops_block(fn) -> str:  # noqa: ANN001
        src = inspect.getsource(fn)
        body = src[src.index('if kind == "add"') : src.index("x = torch.where")]
        return "\n".join(line.strip() for line in body.splitlines())

    assert ops_block(nt._trace_body) == ops_block(tg._generate_body)


# -- a lazily loaded nnsight model; remote=True -----------------------------------------------------
LLAMA_SITES = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "model.layers.0.self_attn:output"]


def _lazy_llama():  # noqa: ANN202
    """What a user with NDIF access builds: LanguageModel(repo) without dispatch=True (meta weights).
    Here the repo is the tiny llama checkpoint folder (the one load_model("tiny-llama") reads)."""
    from nnsight import LanguageModel
    from transformers import AutoTokenizer

    from conceptkit.models import tiny_hf

    _, folder = tiny_hf("llama")
    lm = LanguageModel(str(folder), tokenizer=AutoTokenizer.from_pretrained(str(folder)), attn_implementation="eager")
    return lm, folder


def _is_meta(lm) -> bool:  # noqa: ANN001
    return all(p.is_meta for p in lm._module.parameters())


@pytest.fixture(scope="module")
def llama_reference():
    return ck.load_model("tiny-llama", backend="nnsight")


def test_lazy_nnsight_model_wraps_without_loading_and_traces(llama_reference) -> None:
    """ck.wrap keeps a lazily loaded nnsight model on meta (sites, ref from the repo id, no weights);
    the trace executor under remote="local" (nnsight dispatches for a local run) equals the hook
    executor of load_model's copy for capture, run, grad, nll and generation."""
    ref = llama_reference
    lm, folder = _lazy_llama()
    m = ck.wrap(lm)
    assert not lm.dispatched and _is_meta(lm) and not m.dispatched
    assert m.n_layers == ref.n_layers and m.native_sites() == ref.native_sites()
    assert m.ref.weights_hash.startswith("nnsight-key:") and _is_meta(lm)  # identity without loading
    t = m.with_executor("trace", remote="local")
    a, b = t.capture(TEXTS, LLAMA_SITES, "mean"), ref.capture(TEXTS, LLAMA_SITES, "mean")
    for s in LLAMA_SITES:
        assert torch.allclose(a[s], b[s], atol=1e-5, rtol=0), s
    assert lm.dispatched and not _is_meta(lm)  # nnsight's rule: a local run loads the weights
    iv = [Add(site="blocks.0.hook_resid_post", vector=torch.ones(ref.d_model), coeff=2.0)]
    assert torch.allclose(t.run(TEXTS, interventions=iv), ref.run(TEXTS, interventions=iv), atol=1e-5, rtol=0)
    obj = {"kind": "logit_diff", "positive": 5, "negative": 7}
    ga, gb = t.grad(TEXTS, "blocks.0.hook_resid_post", obj), ref.grad(TEXTS, "blocks.0.hook_resid_post", obj)
    assert torch.allclose(getattr(ga, "grads", ga), getattr(gb, "grads", gb), atol=1e-5, rtol=0)
    (na, ca), (nb, cb) = t.nll(TEXTS, iv), ref.nll(TEXTS, iv)
    assert torch.equal(ca, cb) and torch.allclose(na, nb, atol=1e-5, rtol=0)
    assert _ids(t.generate(PROMPTS, iv, max_new_tokens=4)) == _ids(ref.generate(PROMPTS, iv, max_new_tokens=4))
    assert m.ref.weights_hash == ref.ref.weights_hash  # loaded now: the weights' own hash


def test_lazy_nnsight_model_hook_executor_dispatches_explicitly(llama_reference) -> None:
    """The hook executor never runs on meta tensors: its first use dispatches the model (loads the
    weights, as nnsight's own local trace would) and re-points conceptkit at the loaded modules."""
    lm, _ = _lazy_llama()
    m = ck.wrap(lm)
    assert _is_meta(lm)
    a, b = m.capture(TEXTS, LLAMA_SITES, "last"), llama_reference.capture(TEXTS, LLAMA_SITES, "last")
    assert lm.dispatched and not any(p.is_meta for p in m.hf.parameters())
    for s in LLAMA_SITES:
        assert torch.equal(a[s], b[s]), s
    assert torch.equal(m.weights.W_U, llama_reference.weights.W_U)


def test_remote_true_goes_to_nnsight_remote_backend_and_refusals_send_nothing(llama_reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """remote=True reaches nnsight's RemoteBackend with the model's key (replaced here by a stand-in
    that records the request; nothing is sent, there is no network). Inexpressible plans are refused
    before a request exists and load nothing locally; expressible ones, run by the stand-in through
    nnsight's local simulation of the server, equal the hook executor."""
    import nnsight.modeling.huggingface as nh
    from nnsight.intervention.backends import remote as nn_remote
    from nnsight.intervention.backends.local import LocalSimulationBackend

    lm, folder = _lazy_llama()
    requests: list[str] = []
    run_here = {"on": False}

    class RecordingRemote:
        def __init__(self, model_key: str, host=None, env=None, blocking=True, job_id=None, verbose=False) -> None:  # noqa: ANN001
            self.model_key = model_key

        def __call__(self, tracer) -> None:  # noqa: ANN001
            requests.append(self.model_key)
            if not run_here["on"]:
                raise RuntimeError("request recorded, not sent")
            LocalSimulationBackend(lm)(tracer)  # what the server would run, here

    monkeypatch.setattr(nn_remote, "RemoteBackend", RecordingRemote)
    monkeypatch.setitem(nh._ID_CACHE, str(folder), "tiny/llama")  # the key's Hub lookup, offline
    t = ck.wrap(lm).with_executor("trace", remote=True)
    assert t._trace_executor.remote is True

    class ReadsPattern(GenerationPolicy):
        reads = ["blocks.0.attn.hook_pattern"]

    refused = [
        lambda: t.grad(TEXTS, "blocks.0.hook_resid_post", {"kind": "loss"}),
        lambda: t.capture(TEXTS, "blocks.0.attn.hook_pattern"),
        lambda: t.run(TEXTS, interventions=[Scale(site="blocks.0.attn.hook_pattern", factor=2.0)]),
        lambda: t.generate(PROMPTS, [Scale(site="blocks.0.attn.hook_pattern", factor=2.0)], max_new_tokens=2),
        lambda: t.generate(PROMPTS, max_new_tokens=2, policy=ReadsPattern()),
    ]
    for call in refused:
        with pytest.raises(CapabilityError):
            call()
    assert requests == [] and _is_meta(lm)  # nothing sent, nothing loaded
    with pytest.raises(RuntimeError, match="recorded, not sent"):
        t.capture(TEXTS, LLAMA_SITES[0])
    assert len(requests) == 1 and '"repo_id": "tiny/llama"' in requests[0]  # the model's remote key
    assert _is_meta(lm)  # remote=True loads nothing here

    run_here["on"] = True
    ref = llama_reference
    a, b = t.capture(TEXTS, LLAMA_SITES, "mean"), ref.capture(TEXTS, LLAMA_SITES, "mean")
    for s in LLAMA_SITES:
        assert torch.allclose(a[s], b[s], atol=1e-5, rtol=0), s
    iv = [Add(site="blocks.0.hook_resid_post", vector=torch.ones(ref.d_model), coeff=2.0)]
    n = len(requests)
    assert _ids(t.generate(PROMPTS, iv, max_new_tokens=3)) == _ids(ref.generate(PROMPTS, iv, max_new_tokens=3))
    assert len(requests) == n + 1  # one remote generate for the batch
    policy_a = t.generate(PROMPTS[:1], max_new_tokens=3, policy=_Steer("last", ref.d_model))
    policy_b = ref.generate(PROMPTS[:1], max_new_tokens=3, policy=_Steer("last", ref.d_model))
    assert _ids(policy_a) == _ids(policy_b) and len(requests) == n + 1 + 3  # one remote trace per step
