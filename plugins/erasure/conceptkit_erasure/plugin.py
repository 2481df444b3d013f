"""Entry-point module: registers the ``erasure`` method."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_erasure.method import Erasure

    register(Erasure)


@ck.hookimpl
def register_commands(cli):  # type: ignore[no-untyped-def]
    import click

    @cli.command(name="erasure-apply")
    @click.argument("record_id")
    @click.option("--model", "model_name", default="smollm2-135m", show_default=True)
    @click.option("--backend", default="transformer_lens", show_default=True)
    @click.option("--store", "store_path", type=click.Path(file_okay=False))
    @click.option("--text", "texts", multiple=True, help="Texts to compare (default: the held-out digit corpus).")
    def erasure_apply(record_id, model_name, backend, store_path, texts):  # type: ignore[no-untyped-def]
        """Apply a stored eraser to a model: bits per byte and greedy continuations, without and with it."""
        import math

        from conceptkit.store import open_store
        from conceptkit_erasure.corpus import digit_corpus
        from conceptkit_erasure.method import Erasure

        store = open_store(store_path)
        record, tensors = store.load(record_id)
        if record.kind != "eraser":
            raise ck.ConceptkitError(f"record {record.short_id} is a {record.kind!r}, not an eraser")
        model = ck.load_model(model_name, backend=backend)
        texts = list(texts) or digit_corpus(40, seed=123)
        n_bytes = sum(len(t.encode()) for t in texts)
        before = float(model.nll(texts)[0].sum()) / math.log(2) / n_bytes
        with Erasure().apply(tensors, model):
            after = float(model.nll(texts)[0].sum()) / math.log(2) / n_bytes
            erased = model.generate(texts[:3], max_new_tokens=8)
        plain = model.generate(texts[:3], max_new_tokens=8)
        click.echo(f"{record.concept!r} eraser {record.short_id}: {before:.4f} bits/byte without, {after:.4f} with")
        for text, a, b in zip(texts, plain, erased):
            click.echo(f"  {text!r}\n    without: {a!r}\n    with:    {b!r}")
