"""A Rail2Country-style task on SmolLM2-135M: accuracy with and without ActivationReasoning.

Written for the project (not the HF dataset): the prompt lists 8 rules "A, B and C -> X" (train
colours to country of origin; a compact form of Rail2Country's "If the colors are ..." lines, to
fit the CPU budget; arbitrary colour triples, so world knowledge of flags does
not help), then describes a three-car train; the answer is the country. Splits:

* ``mono``: the cars' colours are named ("the first car is red");
* ``meta``: by simile ("the first car is the colour of a tomato"); the dictionary is trained on
  colour *words*, so detection has to generalise, as in the paper's hard split.

Held-out prompts: 8 rules x 6 car orders x 3 question templates = 144 per split (rule order in
the context shuffled per prompt, seeded). The dictionary (colours and countries) is built from
separate example sentences; detection balanced accuracy per colour is measured on held-out
sentences (sequence level: "the sentence mentions the colour"). Detection counts only the
question's tokens (``detect_from``), since the rules name every colour.

Sources: ``--source vectors`` (mean-difference concept vectors at the site) or ``--source sae``
(the embedded SAE, ``ck.load_sae("smollm2-135m", site=...)``, built once and cached).

    OMP_NUM_THREADS=1 .venv/bin/python plugins/activation_reasoning/scripts/rail2country.py --source vectors --limit 144
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

import conceptkit as ck
from conceptkit_activation_reasoning import detection as det
from conceptkit_activation_reasoning.build import build_dictionary, labels_for, padded_activations
from conceptkit_activation_reasoning.dictionary import keep_top
from conceptkit_activation_reasoning.engine import ActivationReasoner, ARSettings
from conceptkit_activation_reasoning.result import wilson

COLOURS = ["red", "white", "blue", "green", "yellow", "black", "orange"]
SIMILE = {"red": "a tomato", "white": "snow", "blue": "the clear sky", "green": "fresh grass", "yellow": "a banana",
          "black": "coal", "orange": "a pumpkin"}
RULES = {
    ("green", "white", "orange"): "Ireland", ("red", "blue", "yellow"): "Japan", ("black", "white", "green"): "Canada",
    ("blue", "orange", "black"): "Brazil", ("yellow", "green", "red"): "Norway", ("white", "black", "red"): "Spain",
    ("orange", "yellow", "blue"): "Mexico", ("green", "blue", "white"): "Egypt",
}
COUNTRIES = list(RULES.values())
QUESTIONS = [
    "Question: A train has three cars. The first car is {a}, the second car is {b} and the third car is {c}. The country of origin of the train is",
    "Question: I saw a train whose cars were {a}, {b} and {c}. According to the rules, the train comes from",
    "Question: The colors of the train are {a}, {b} and {c}. Answer with the country. The country of origin is",
]
OBJECTS = ["car", "door", "hat", "ball", "house", "shirt", "flower", "bird", "cup", "box", "kite", "boat"]
TRAIN_T = ["The {o} was {c}.", "She bought a {c} {o} yesterday.", "A {c} {o} stood next to the road.", "My favourite {o} is {c}.",
           "The first {o} is {c}, the second {o} is grey.", "I saw {c}, grey and brown {o}s."]
TEST_T = ["He painted the {o} {c} last week.", "There is a {c} {o} in the picture.", "They found a small {c} {o}."]
COUNTRY_T = ["{x} is a country with a long history.", "We travelled to {x} last summer.", "The capital of {x} is a large city.",
             "People in {x} speak with a local accent."]
NEUTRAL = ["The weather was nice today.", "He read a book in the evening.", "They walked to the station together.",
           "The meeting starts at nine.", "We cooked dinner for our friends.", "The children played in the park."]


def rule_text(rules: list[tuple[tuple[str, str, str], str]]) -> str:
    return "Rules (train colors -> country of origin):\n" + "\n".join(f"{a}, {b} and {c} -> {x}" for (a, b, c), x in rules) + "\n"


def task(split: str, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for (body, country), (perm, q) in itertools.product(RULES.items(), itertools.product(itertools.permutations(range(3)), QUESTIONS)):
        order = list(RULES.items())
        rng.shuffle(order)
        cols = [body[i] for i in perm]
        named = cols if split == "mono" else [f"the colour of {SIMILE[c]}" for c in cols]
        context = rule_text(order)
        items.append({"context": context, "question": q.format(a=named[0], b=named[1], c=named[2]), "answer": country, "colours": cols})
    rng.shuffle(items)
    return items


def example_sentences(templates: list[str], seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    texts, concepts = [], []
    for c in COLOURS:
        for t in templates:
            for o in rng.sample(OBJECTS, 2):
                texts.append(t.format(o=o, c=c))
                concepts.append([c])
    return texts, concepts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["vectors", "sae"], default="vectors")
    ap.add_argument("--site", default="blocks.12.hook_resid_post")
    ap.add_argument("--limit", type=int, default=144, help="held-out prompts per split")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--splits", default="mono,meta")
    ap.add_argument("--backend", default="transformer_lens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=3)
    ap.add_argument("--top-output", type=int, default=2, help="detection_top_k_output m (the reference's default 2)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t0 = time.time()
    model = ck.load_model("smollm2-135m", backend=args.backend)
    sae = ck.load_sae("smollm2-135m", site=args.site) if args.source == "sae" else None

    train, _ = example_sentences(TRAIN_T, 0)
    train += [t.format(x=x) for x in COUNTRIES for t in COUNTRY_T] + NEUTRAL
    concepts = COLOURS + COUNTRIES
    d, enc, _ = build_dictionary(model, args.site, train, concepts, sae=sae, top_output=args.top_output)
    print(f"dictionary ({args.source}) built in {time.time() - t0:.0f}s; train balanced acc "
          + ", ".join(f"{c} {b:.2f}" for c, b in zip(concepts, d.balanced_accuracy)), flush=True)

    # detection balanced accuracy per colour on held-out sentences (sequence level)
    test, test_c = example_sentences(TEST_T, 1)
    test += NEUTRAL
    h, mask, ids = padded_activations(model, test, args.site)
    lab = labels_for(model, test, ids, concepts, "word", None, "last", h.shape[1])
    lat = enc.encode(h.to(enc.dtype)).float()
    if args.source == "sae":
        lat = keep_top(lat, 10) * mask[..., None]
    seq_bal = det.detection_accuracy(d, lat, lab, mask, level="sequence", top_output=args.top_output)
    tok_bal = det.detection_accuracy(d, lat, lab, mask, level="token", top_output=args.top_output)
    detection = {c: round(seq_bal[i], 4) for i, c in enumerate(concepts) if c in COLOURS}
    detection_tokens = {c: round(tok_bal[i], 4) for i, c in enumerate(concepts) if c in COLOURS}
    print("held-out detection balanced accuracy (sequence):", detection, flush=True)
    print("held-out detection balanced accuracy (token):", detection_tokens, flush=True)

    ar = ActivationReasoner(model, d, {body: x for body, x in RULES.items()}, sae=enc, settings=ARSettings(alpha=args.alpha, top_output=args.top_output), site=args.site)
    report = {"source": args.source, "site": args.site, "alpha": args.alpha, "top_output": args.top_output, "detection_balanced_accuracy": detection, "detection_balanced_accuracy_tokens": detection_tokens,
              "train_balanced_accuracy": dict(zip(concepts, d.balanced_accuracy)), "splits": {}}
    for split in args.splits.split(","):
        items = task(split)[: args.limit]
        plain_ok = ar_ok = fired_ok = 0
        detected_ok = 0
        for start in range(0, len(items), args.batch):
            chunk = items[start : start + args.batch]
            prompts = [it["context"] + it["question"] for it in chunk]
            starts = [len(model.tokenize([it["context"]]).input_ids[0]) for it in chunk]
            out = ar.generate(prompts, max_new_tokens=args.new_tokens, detect_from=starts)
            plain = model.generate(prompts, max_new_tokens=args.new_tokens, batch_size=len(prompts))
            for i, it in enumerate(chunk):
                a = it["answer"].lower()
                plain_ok += a in plain[i].lower()
                ar_ok += a in out.texts[i].lower()
                fired_ok += it["answer"] in out.inferences[i].concluded
                detected_ok += set(out.detections[i].detected()) >= set(it["colours"])
            print(f"  {split} {start + len(chunk)}/{len(items)}: plain {plain_ok}, AR {ar_ok}, rule fired correctly {fired_ok} "
                  f"({time.time() - t0:.0f}s)", flush=True)
        n = len(items)
        report["splits"][split] = {
            "n": n, "plain": plain_ok / n, "plain_ci": wilson(plain_ok, n), "ar": ar_ok / n, "ar_ci": wilson(ar_ok, n),
            "fired_correct": fired_ok / n, "all_colours_detected": detected_ok / n, "example_prompt": items[0]["context"] + items[0]["question"],
        }
        print(json.dumps({split: report["splits"][split]}, default=str)[:600], flush=True)
        report["seconds"] = time.time() - t0
        Path(args.out).mkdir(parents=True, exist_ok=True)
        tag = "" if args.top_output == 2 else f"_m{args.top_output}"
        path = Path(args.out) / f"rail2country_{args.source}_alpha{args.alpha}{tag}.json"
        path.write_text(json.dumps(report, indent=2, default=str))  # after every split
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
