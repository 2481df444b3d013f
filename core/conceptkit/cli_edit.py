"""``conceptkit edit apply|show|rm RECORD``: one command for every stored edit.

Serves weight-edit records (UCE, ROCR, any :class:`conceptkit.WeightEdit` kind) and the stored
artifacts of fit/apply methods (LEACE erasers), through :func:`conceptkit.edits.load`. A thin
layer over the Python API: ``ck.edits.load(store, id).apply(model)`` is what ``apply`` runs.
"""

from __future__ import annotations

import math
from typing import Any

import click

DEFAULT_TEXTS = (
    "The meeting starts at 9 and ends at 11.",
    "She bought 3 apples and 12 pears at the market.",
    "Paris is the capital of France, and Rome is",
    "Once upon a time, in a small village, there lived",
)

store_option = click.option("--store", "store_path", type=click.Path(file_okay=False), help="Store folder.")


def _open(path: str | None) -> Any:
    from conceptkit.store import open_store

    return open_store(path)


@click.group()
def edit() -> None:
    """Apply, show or remove stored edits (weight edits, erasers)."""


def _describe(edit_obj: Any) -> list[str]:
    from conceptkit.edits import WeightEditSet

    if not isinstance(edit_obj, WeightEditSet):
        return [f"  {edit_obj!r}"]
    lines = []
    for e in edit_obj:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in e.tensors().items())
        lines.append(f"  {e.kind:<9} {e.target:<50} {shapes}  base {e.base_hash or '-'}")
    return lines


@edit.command()
@store_option
@click.argument("record_id")
def show(store_path: str | None, record_id: str) -> None:
    """Show what a stored edit changes."""
    from conceptkit.edits import from_record

    record, tensors = _open(store_path).load(record_id)
    loaded = from_record(record, tensors)
    model = (record.model or {}).get("name", "?")
    click.echo(f"{record.short_id} {record.kind} {record.concept!r} by {record.method.name} ({record.method.distribution} "
               f"{record.method.version}) on {model}")
    for line in _describe(loaded):
        click.echo(line)


@edit.command()
@store_option
@click.argument("record_id")
def rm(store_path: str | None, record_id: str) -> None:
    """Remove a stored edit (refuses records that are not edits)."""
    from conceptkit.edits import from_record

    store = _open(store_path)
    record, tensors = store.load(record_id)
    from_record(record, tensors)  # raises for records no edit kind serves
    store.rm(record.id)
    click.echo(f"removed {record.kind} {record.short_id} ({record.concept!r})")


@edit.command()
@store_option
@click.argument("record_id")
@click.option("--model", "model_name", help="Named model, local path or HF id (default: the record's model).")
@click.option("--backend", default=None, help="transformer_lens | nnsight | transformers | diffusers (default: the record's).")
@click.option("--text", "texts", multiple=True, help="Texts to compare (default: a few generic sentences).")
@click.option("--max-new-tokens", default=8, show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Apply even if the model's weights differ from the edit's base.")
def apply(store_path: str | None, record_id: str, model_name: str | None, backend: str | None, texts: tuple[str, ...],
          max_new_tokens: int, no_check_hash: bool) -> None:
    """Apply a stored edit to a model: bits per byte and greedy continuations, without and with it."""
    from conceptkit.edits import from_record
    from conceptkit.models import load_model

    record, tensors = _open(store_path).load(record_id)
    loaded = from_record(record, tensors)
    name = model_name or (record.model or {}).get("name") or "smollm2-135m"
    backend = backend or (record.model or {}).get("backend") or "transformer_lens"
    model = load_model(name, backend=backend)
    label = f"{record.concept!r} {record.kind} {record.short_id}"
    if getattr(model, "is_encoder", False) or not hasattr(model, "nll") or "generation" not in {c.value for c in model.capabilities}:
        with loaded.apply(model, check_hash=not no_check_hash):
            click.echo(f"{label}: applied to {name} ({backend})")
            for line in _describe(loaded):
                click.echo(line)
        return
    texts = texts or DEFAULT_TEXTS
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    def bits_per_byte() -> float:
        return float(model.nll(list(texts))[0].sum()) / math.log(2) / n_bytes

    before = bits_per_byte()
    plain = model.generate(list(texts), max_new_tokens=max_new_tokens)
    with loaded.apply(model, check_hash=not no_check_hash):
        after = bits_per_byte()
        edited = model.generate(list(texts), max_new_tokens=max_new_tokens)
    click.echo(f"{label}: {before:.4f} bits/byte without, {after:.4f} with")
    for text, a, b in zip(texts, plain, edited):
        click.echo(f"  {text!r}\n    without: {a!r}\n    with:    {b!r}")
