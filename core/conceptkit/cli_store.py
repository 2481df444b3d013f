"""``conceptkit store ...``: inspect and maintain the concept-vector store."""

from __future__ import annotations

import json

import click


def _open(path: str | None):  # type: ignore[no-untyped-def]
    from conceptkit.store import open_store

    return open_store(path)


store_option = click.option("--store", "store_path", type=click.Path(file_okay=False), help="Store folder.")


@click.group()
def store() -> None:
    """Inspect and maintain the concept-vector store."""


@store.command("ls")
@store_option
@click.option("--concept", help="Concept names containing this text, or a glob ('sent*', '*[Bb]ias*').")
@click.option("--exact", is_flag=True, help="--concept must match the whole name.")
@click.option("--model")
@click.option("--site")
@click.option("--method")
@click.option("--tag")
@click.option("--json", "as_json", is_flag=True)
def ls(store_path, concept, exact, model, site, method, tag, as_json):  # type: ignore[no-untyped-def]
    """List records (newest first), filtered."""
    if concept is not None and not exact and not any(c in concept for c in "*?["):
        concept = f"*{concept}*"  # plain text: a substring match
    records = _open(store_path).find(concept=concept, model=model, site=site, method=method, tag=tag)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    _records_table(records)


def _records_table(records: list) -> None:  # type: ignore[type-arg]
    """Records as a table that stays readable in a narrow terminal: ids and sites are never cut
    (other cells wrap); under 120 columns method and model share a column and tags and dates go."""
    from rich.table import Table

    from conceptkit._cli_output import console

    out = console()
    table = Table(title=f"{len(records)} record(s)")
    narrow = out.width < 120
    table.add_column("id", no_wrap=True, min_width=12)
    table.add_column("concept", overflow="fold")
    if narrow:
        table.add_column("method / model", overflow="fold")
    else:
        table.add_column("method", overflow="fold")
        table.add_column("model", overflow="fold")
    table.add_column("site", no_wrap=True)
    if not narrow:
        table.add_column("tags", overflow="fold")
        table.add_column("created", no_wrap=True)
    for r in records:
        model = (r.model or {}).get("name") or ""
        cells = [r.short_id, r.concept]
        cells += [f"{r.method.name} / {model}" if model else r.method.name] if narrow else [r.method.name, model]
        cells.append(r.site or "")
        if not narrow:
            cells += [",".join(r.tags), r.created_at.strftime("%Y-%m-%d %H:%M")]
        table.add_row(*cells)
    out.print(table)


@store.command()
@store_option
@click.argument("record_id")
def show(store_path, record_id):  # type: ignore[no-untyped-def]
    """Show one record's manifest."""
    click.echo(_open(store_path).get(record_id).model_dump_json(indent=2))


@store.command()
@store_option
@click.argument("record_id")
@click.option("-k", default=10, show_default=True)
@click.option("--tensor", default=None, help="Which tensor of the record to use as the query.")
@click.option("--model")
@click.option("--site")
@click.option("--method")
def similar(store_path, record_id, k, tensor, model, site, method):  # type: ignore[no-untyped-def]
    """Records most similar (cosine) to a record's vector."""
    from conceptkit._cli_output import table as _table

    matches = _open(store_path).similar(record_id, k=k, tensor=tensor, model=model, site=site, method=method)
    _table("similar", ["score", "id", "tensor", "concept", "site"], [[f"{m.score:.4f}", m.record.short_id, m.tensor, m.record.concept, m.record.site] for m in matches])


@store.command()
@store_option
@click.argument("record_ids", nargs=-1, required=True)
def rm(store_path, record_ids):  # type: ignore[no-untyped-def]
    """Remove records."""
    s = _open(store_path)
    for rid in record_ids:
        s.rm(rid)
        click.echo(f"removed {rid}")


@store.command()
@store_option
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("record_ids", nargs=-1)
def export(store_path, path, record_ids):  # type: ignore[no-untyped-def]
    """Export records (default: all) to a bundle file."""
    from conceptkit.store.bundle import export_bundle

    n = export_bundle(_open(store_path), path, list(record_ids) or None)
    click.echo(f"exported {n} record(s) to {path}")


@store.command("import")
@store_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_(store_path, path):  # type: ignore[no-untyped-def]
    """Import a bundle (validated before anything is written)."""
    from conceptkit.store.bundle import import_bundle

    target = _open(store_path)
    before = len(target)
    ids = import_bundle(target, path)
    new = len(target) - before
    click.echo(f"imported {len(ids)} record(s): {new} new, {len(ids) - new} already in the store")


@store.command()
@store_option
def verify(store_path):  # type: ignore[no-untyped-def]
    """Recompute hashes; report corrupt records, orphan blobs and temporary files."""
    report = _open(store_path).verify()
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


@store.command()
@store_option
def gc(store_path):  # type: ignore[no-untyped-def]
    """Delete orphan blobs and temporary files left by interrupted writes."""
    removed = _open(store_path).gc()
    click.echo(f"removed {len(removed)} file(s)")


@store.command("import-sae")
@store_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--concept", default=None)
def import_sae(store_path, folder, concept):  # type: ignore[no-untyped-def]
    """Import a SAELens SAE folder as a dictionary record."""
    from conceptkit.store.interop import import_saelens

    record = import_saelens(_open(store_path), folder, concept=concept)
    click.echo(record.id)


@store.command("export-gguf")
@store_option
@click.argument("record_ids", nargs=-1, required=True)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model-hint", default=None)
def export_gguf(store_path, record_ids, path, model_hint):  # type: ignore[no-untyped-def]
    """Export vectors as a GGUF control vector (llama.cpp, repeng).

    RECORD_IDS: one per-layer vector set, or several single-vector records (a TCAV CAV, a
    steering vector) each at a blocks.<l>.hook_resid_post site; one direction per layer."""
    from conceptkit.store.interop import export_control_vector

    export_control_vector(_open(store_path), list(record_ids), path, model_hint)
    click.echo(f"wrote {path}")
