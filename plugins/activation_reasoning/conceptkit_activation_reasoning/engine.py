"""The runtime: detect propositions in prompts, reason over them, generate steered by the conclusions.

:class:`ActivationReasoner` ties the stages together for one model, one SAE (or concept-vector
"SAE") at one site, one dictionary and a rule set:

1. ``detect(prompts)``: the prompts' activations at the site (a capture that stops at the site),
   SAE latents, scores, propositions per token (:mod:`.detection`).
2. ``reason``: the detected names in sequence order -> :func:`.reasoner.reason` per prompt.
3. ``generate(prompts)``: concluded heads that have latents in the dictionary give a steering
   direction per prompt (:mod:`.steering`); the prompt's last token and every generated token get
   ``Delta`` added at the site while the conclusion holds (the reference's "last position on
   every forward pass"). A :class:`ReasoningPolicy` reads the site at every step, reports the
   propositions of each new token and, with ``scope`` ``"output"``/``"full_sequence"``, adds
   them to the facts (so conclusions, and the direction, may grow during generation).

Every step's detections, firings and applied deltas are in :attr:`ARGeneration.steps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

import conceptkit as ck
from conceptkit_activation_reasoning import detection as det
from conceptkit_activation_reasoning.dictionary import ConceptDictionary, vector_sae
from conceptkit_activation_reasoning.logic import Rule, parse_rules
from conceptkit_activation_reasoning.reasoner import Inference, keep_fired, reason
from conceptkit_activation_reasoning.steering import ARSteer, combine, concept_direction


@dataclass
class ARSettings:
    """Detection, reasoning and steering knobs (names follow the reference's ``LogicConfig``)."""

    top_output: int = 2  # detection_top_k_output (m)
    k_c: int = 1  # concept_dictionary_top_k_concepts
    search_top_k: int = 10
    allow_multi: bool = False
    threshold_for_rules: bool = True
    scope: Literal["input", "output", "full_sequence"] = "input"
    rules_mode: Literal["forward_chaining", "legacy", "simple", "complex", "open_world"] = "forward_chaining"
    alpha: float = 0.5  # steering_factor
    steer_top_k: int = 10  # steering_top_k_rule (K)
    weighting: str = "log_decay"
    norm: int | str = 2
    methodology: str = "sum_shift"
    use_dictionary_weights: bool = False
    steer_detected: bool = False  # also steer heads that were detected rather than concluded


@dataclass
class PromptDetection:
    """One prompt: token ids, propositions ``[T, C]`` and the detected names in sequence order."""

    token_ids: torch.Tensor
    props: torch.Tensor
    scores: torch.Tensor
    names: list[str]

    def detected(self) -> list[str]:
        t, c = torch.nonzero(self.props, as_tuple=True)
        order = torch.argsort(t * self.props.shape[1] + c)
        return [self.names[int(c[i])] for i in order]


@dataclass
class StepTrace:
    """One forward of a generation: new propositions per row, conclusions so far, deltas applied."""

    step: int
    detected: list[list[str]]
    concluded: list[list[str]]
    delta: torch.Tensor  # [B, d] the delta added at each row's newest token in this forward


@dataclass
class ARGeneration:
    texts: list[str]
    token_ids: list[torch.Tensor]
    detections: list[PromptDetection]
    inferences: list[Inference]
    steered: list[list[str]]
    steps: list[StepTrace] = field(default_factory=list)


class ActivationReasoner:
    """See the module docs. ``sae`` is a ``ck.SAE`` (a vector dictionary builds its own)."""

    def __init__(self, model: Any, dictionary: ConceptDictionary, rules: Any, sae: Any = None, settings: ARSettings | None = None,
                 site: str | None = None) -> None:
        self.model = model
        self.dictionary = dictionary
        self.rules: list[Rule] = parse_rules(rules)
        self.site = site or dictionary.site or getattr(sae, "site", None)
        if self.site is None:
            raise ck.InputError("ActivationReasoner needs a site (from the dictionary, the SAE or site=)")
        if sae is None:
            if dictionary.source != "vectors" or dictionary.vectors is None:
                raise ck.InputError("an SAE dictionary needs its SAE (sae=...)")
            sae = vector_sae(dictionary.vectors, self.site, dictionary.vector_bias)
        self.sae = sae
        self.settings = settings or ARSettings()

    # -- stage 2 ---------------------------------------------------------------------------------
    def latents(self, h: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(h.to(self.sae.dtype)).float()

    def propositions(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, props)`` ``[B, T, C]`` for activations ``h [B, T, d]``."""
        s = self.settings
        a = det.scores(self.latents(h), self.dictionary, s.top_output, s.k_c, s.search_top_k)
        p = det.propositions(a, self.dictionary.thresholds, mask, threshold_for_rules=s.threshold_for_rules, allow_multi=s.allow_multi)
        return a, p

    def activations(self, prompts: Any, interventions: Any = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per prompt ``(token_ids [T], h [T, d])`` at the site (real tokens only), under
        ``interventions`` (e.g. planted directions)."""
        batch = self.model.tokenize(prompts)
        acts = self.model.capture(batch, self.site, reduce="all", progress=False, interventions=list(interventions))
        h, index = acts[self.site], acts.token_index
        out = []
        for i in range(len(batch.input_ids)):
            sel = index[:, 0] == i
            ids = batch.input_ids[i][batch.attention_mask[i].bool()]
            out.append((ids, h[sel][torch.argsort(index[sel, 1])]))
        return out

    def detect(self, prompts: Any, interventions: Any = (), detect_from: list[int] | None = None) -> list[PromptDetection]:
        """Propositions per prompt; ``detect_from[i]``: only tokens from that position on count
        (e.g. the question after in-context rules, whose words would otherwise be detected)."""
        out = []
        for i, (ids, h) in enumerate(self.activations(prompts, interventions)):
            mask = None
            if detect_from is not None:
                mask = (torch.arange(h.shape[0]) >= detect_from[i])[None]
            a, p = self.propositions(h[None], mask)
            out.append(PromptDetection(ids, p[0], a[0], self.dictionary.names))
        return out

    # -- stage 3 ---------------------------------------------------------------------------------
    def reason(self, detected: list[str]) -> Inference:
        return reason(detected, self.rules, self.settings.rules_mode)

    # -- stage 4 ---------------------------------------------------------------------------------
    def steer_heads(self, inf: Inference) -> list[str]:
        """Conclusions that can be steered: heads with latents in the dictionary."""
        heads = list(inf.concluded)
        if self.settings.steer_detected:
            heads = list(dict.fromkeys(heads + sorted(inf.facts)))
        return [h for h in heads if h in self.dictionary.names]

    def direction(self, heads: list[str]) -> torch.Tensor:
        """The combined steering direction ``s [d]`` for ``heads`` (zeros when there are none)."""
        s = self.settings
        W = self.sae.W_dec.float()
        dirs = []
        for name in heads:
            c = self.dictionary.index(name)
            idx = self.dictionary.indices[c, : s.steer_top_k]
            keep = idx >= 0
            w = self.dictionary.weights[c, : s.steer_top_k][keep] if s.use_dictionary_weights else None
            dirs.append(concept_direction(W[idx[keep]], weighting=s.weighting, norm=s.norm, weights=w))
        if not dirs:
            return torch.zeros(W.shape[1])
        return combine(dirs, s.methodology)

    def generate(self, prompts: Any, *, max_new_tokens: int = 5, steer: bool = True, interventions: Any = (),
                 detect_from: list[int] | None = None, **kwargs: Any) -> ARGeneration:
        """Detect, reason and generate (greedy by default) with steering from the conclusions.
        ``interventions`` are fixed ones applied before the steering (detection sees them too)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        dets = self.detect(prompts, interventions, detect_from)
        infs = [self.reason(d.detected() if self.settings.scope != "output" else []) for d in dets]
        policy = ReasoningPolicy(self, dets, infs, steer=steer)
        gen = self.model.generate(prompts, max_new_tokens=max_new_tokens, policy=policy, batch_size=len(prompts),
                                  interventions=[*interventions, policy.prefill_steer], **kwargs)
        return ARGeneration(list(gen), list(gen.token_ids), dets, policy.inferences, policy.steered_heads(), policy.trace)


class ReasoningPolicy(ck.GenerationPolicy):
    """Reads the site each step: reports new propositions, updates facts (output scopes), steers.

    The prompt's last token is steered by ``prefill_steer`` (a fixed intervention at that
    position; the conclusions come from a detection pass over the prompts), later tokens by the
    policy's own :class:`ARSteer` on the newest row (``positions = "last"``).
    """

    positions = "last"

    def __init__(self, ar: ActivationReasoner, dets: list[PromptDetection], infs: list[Inference], steer: bool = True) -> None:
        self.ar, self.dets, self.steer = ar, dets, steer
        self.reads = [ar.site]
        self.inferences = list(infs)
        self.facts = [d.detected() if ar.settings.scope != "output" else [] for d in dets]
        self.trace: list[StepTrace] = []
        self.current = self._steerer(positions=[-1])
        self.prefill_steer = self.current

    def steered_heads(self) -> list[list[str]]:
        return [self.ar.steer_heads(inf) if self.steer else [] for inf in self.inferences]

    def _steerer(self, positions: Any = "all") -> ARSteer:
        heads = self.steered_heads()
        direction = torch.stack([self.ar.direction(h) for h in heads])  # [B, d]
        s = self.ar.settings
        return ARSteer(site=self.ar.site, direction=direction, alpha=s.alpha if self.steer else 0.0, norm=s.norm, positions=positions)

    def start(self, prompt_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if prompt_ids.shape[0] != len(self.dets):
            raise ck.InputError(f"ReasoningPolicy prepared {len(self.dets)} prompts but the batch has {prompt_ids.shape[0]}")

    def step(self, state: Any) -> list[Any]:
        s = self.ar.settings
        applied = self.current.applied[-1][:, -1] if self.current.applied else torch.zeros(state.token_ids.shape[0], self.ar.sae.d_in)
        self.current.applied.clear()
        self.prefill_steer.applied.clear()  # without a KV cache it is re-applied (and logged) at every recompute
        if state.step == 0:
            detected = [d.detected() for d in self.dets]
        else:
            _, p = self.ar.propositions(state.reads[self.ar.site][:, None])
            detected = [[self.ar.dictionary.names[int(c)] for c in torch.nonzero(p[b, 0]).flatten()] for b in range(p.shape[0])]
            if s.scope in ("output", "full_sequence"):
                changed = False
                for b, names in enumerate(detected):
                    if names:
                        self.facts[b] = self.facts[b] + names
                        changed = True
                if changed:
                    self.inferences = [keep_fired(prev, self.ar.reason(f)) for prev, f in zip(self.inferences, self.facts)]
        self.trace.append(StepTrace(state.step, detected, [list(i.concluded) for i in self.inferences], applied.detach().clone()))
        new = self._steerer()
        if self.current.positions == "all" and torch.equal(new.direction, self.current.direction):
            return [self.current]
        self.current = new
        return [new]
