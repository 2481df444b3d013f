"""``conceptkit sae ...``: train, evaluate, inspect, import and load sparse autoencoders.

An SAE argument is a store record id (or a unique prefix), an SAELens/sparsify folder, or the
name of an embedded SAE (``smollm2-135m``, with ``--site``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _store(path: str | None) -> Any:
    from conceptkit.store import open_store

    return open_store(path)


def _resolve(ref: str, site: str | None, store_path: str | None) -> Any:
    from conceptkit.sae.builtin import RECIPES, load_sae
    from conceptkit.sae.registry import resolve_sae

    if ref in RECIPES:
        return load_sae(ref, site, store=_store(store_path))
    return resolve_sae(ref, _store(store_path) if not Path(ref).is_dir() else None)


def _model_for(sae: Any, model_name: str | None, backend: str) -> Any:
    from conceptkit.errors import InputError
    from conceptkit.models import load_model

    name = model_name or sae.model_name
    if not name:
        raise InputError(f"{sae!r} does not name its model; pass --model")
    return load_model(name, backend=backend)


def _corpus_of(sae_obj: Any, sources: str | None) -> Any:
    """The corpus the SAE was trained on when it is still cached (its held-out split), else today's."""
    from conceptkit.sae import corpus as corpus_mod

    wanted = sae_obj.metadata.get("corpus_fingerprint")
    if wanted and not sources:
        found = corpus_mod.cached(wanted)
        if found is not None:
            return found
        click.echo(f"note: the SAE's corpus {wanted[:12]} is no longer cached; using today's corpus", err=True)
    return corpus_mod.build(tuple(sources.split(",")) if sources else corpus_mod.SOURCES)


@click.group()
def sae() -> None:
    """Sparse autoencoders: train, eval, features, similar, import, load."""


@sae.command()
@click.option("--model", "model_name", default="smollm2-135m", show_default=True)
@click.option("--site", required=True, help="e.g. blocks.12.hook_resid_post")
@click.option("--d-sae", type=int, default=4608, show_default=True)
@click.option("--k", type=int, default=64, show_default=True)
@click.option("--tokens", type=int, default=40_960, show_default=True, help="training tokens captured from the corpus")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True, help="rows per training step")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="SAELens folder to write (default: the cache)")
@click.option("--store", "store_path", type=click.Path(file_okay=False))
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="capture the training activations over Ray workers; ADDRESS (auto, ray://host:10001) joins a cluster")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray workers (with --ray)")
def train(model_name: str, site: str, d_sae: int, k: int, tokens: int, epochs: int, batch_size: int, seed: int,
          out_dir: str | None, store_path: str | None, ray_address: str | None, workers: int) -> None:
    """Train a TopK SAE on the offline corpus (resumable) and store it as a record."""
    import contextlib

    from conceptkit.sae.builtin import Recipe, _folder, load_sae

    recipe = Recipe(model=model_name, default_site=site, d_sae=d_sae, k=k, train_tokens=tokens, epochs=epochs,
                    batch_size=batch_size, seed=seed)
    scope: Any = contextlib.nullcontext()
    if ray_address is not None:
        from conceptkit.scale import use_ray

        scope = use_ray(None if ray_address == "local" else ray_address, workers=workers)
    with scope:  # the workers capture; this process trains and writes
        sae_obj = load_sae(model_name, site, store=_store(store_path), recipe=recipe)
    folder = _folder(model_name, site, recipe)
    if out_dir:
        import shutil

        shutil.copytree(folder, out_dir, dirs_exist_ok=True)
        folder = Path(out_dir)
    prov = json.loads((folder / "provenance.json").read_text())
    click.echo(f"SAE {sae_obj!r}\nfolder {folder}\nrecord {sae_obj.record_id}")
    click.echo(json.dumps(prov["metrics"], indent=2))


@sae.command("load")
@click.argument("name", default="smollm2-135m")
@click.option("--site", default=None)
@click.option("--store", "store_path", type=click.Path(file_okay=False))
def load_cmd(name: str, site: str | None, store_path: str | None) -> None:
    """Load (building once) an embedded SAE and print its record id."""
    from conceptkit.sae.builtin import load_sae

    sae_obj = load_sae(name, site, store=_store(store_path))
    click.echo(f"{sae_obj!r} record {sae_obj.record_id}")


@sae.command("eval")
@click.argument("sae_ref")
@click.option("--site", default=None, help="site of an embedded SAE / override the SAE's site")
@click.option("--model", "model_name", default=None)
@click.option("--backend", default="transformers", show_default=True)
@click.option("--tokens", type=int, default=100_000, show_default=True, help="held-out tokens for FVE, L0, dead latents")
@click.option("--ce-tokens", type=int, default=8192, show_default=True, help="held-out tokens for CE loss recovered (0: skip)")
@click.option("--store", "store_path", type=click.Path(file_okay=False))
@click.option("--sources", default=None, help="corpus sources, comma-separated (default: all)")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(sae_ref: str, site: str | None, model_name: str | None, backend: str, tokens: int, ce_tokens: int,
             store_path: str | None, sources: str | None, as_json: bool) -> None:
    """Held-out FVE, L0, dead latents and CE loss recovered on the offline corpus."""
    import time

    from conceptkit.sae import corpus as corpus_mod
    from conceptkit.sae.evaluate import evaluate

    sae_obj = _resolve(sae_ref, site, store_path)
    site = site or sae_obj.site
    model = _model_for(sae_obj, model_name, backend)
    corpus = _corpus_of(sae_obj, sources)
    windows = corpus_mod.token_windows(corpus, model.tokenizer, "held_out", 128, max_tokens=tokens + tokens // 127 + 128)
    ce = {k: v[: max(1, ce_tokens // 128)] for k, v in windows.items()} if ce_tokens else None
    t0 = time.perf_counter()
    result = evaluate(sae_obj, model, held_out=windows, ce_inputs=ce, site=site)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["corpus_fingerprint"] = corpus.fingerprint
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from conceptkit.cli import _table

    _table(f"{sae_obj!r} on held-out corpus", ["figure", "value"], [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in result.items()])


@sae.command()
@click.argument("sae_ref")
@click.option("--latents", required=True, help="comma-separated latent ids")
@click.option("--site", default=None)
@click.option("--model", "model_name", default=None)
@click.option("--backend", default="transformers", show_default=True)
@click.option("--top", type=int, default=8, show_default=True, help="contexts per latent")
@click.option("--tokens", type=int, default=16_384, show_default=True, help="held-out tokens to search")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default="sae-features.html", show_default=True)
@click.option("--store", "store_path", type=click.Path(file_okay=False))
@click.option("--sources", default=None, help="corpus sources, comma-separated (default: all)")
def features(sae_ref: str, latents: str, site: str | None, model_name: str | None, backend: str, top: int, tokens: int,
             html_path: str, store_path: str | None, sources: str | None) -> None:
    """Top-activating contexts of chosen latents (highlighted), plus a static HTML page."""
    from conceptkit.sae.features import render_html, render_terminal, top_contexts

    sae_obj = _resolve(sae_ref, site, store_path)
    ids = [int(s) for s in latents.split(",") if s.strip()]
    model = _model_for(sae_obj, model_name, backend)
    found = top_contexts(model, sae_obj, ids, site=site, top=top, tokens=tokens,
                         sources=tuple(sources.split(",")) if sources else None)
    render_terminal(found)
    Path(html_path).write_text(render_html(found, title=f"{sae_obj!r}"))
    click.echo(f"wrote {html_path}", err=True)


@sae.command()
@click.argument("sae_ref")
@click.argument("query_record")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--site", default=None)
@click.option("--store", "store_path", type=click.Path(file_okay=False))
def similar(sae_ref: str, query_record: str, k: int, site: str | None, store_path: str | None) -> None:
    """Latents whose decoder directions are closest to a stored vector (e.g. a CAV)."""
    from conceptkit.cli import _table
    from conceptkit.sae.records import similar_latents

    store = _store(store_path)
    sae_obj = _resolve(sae_ref, site, store_path)
    rows = [[m.latent, f"{m.score:.4f}"] for m in similar_latents(sae_obj, query_record, k=k, store=store)]
    _table(f"latents of {sae_obj!r} closest to {query_record[:12]}", ["latent", "cosine"], rows)


@sae.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--hookpoint", default=None, help="sparsify release: the hookpoint sub-folder")
@click.option("--site", default=None, help="override the site")
@click.option("--store", "store_path", type=click.Path(file_okay=False))
def import_cmd(folder: str, hookpoint: str | None, site: str | None, store_path: str | None) -> None:
    """Store a SAELens or sparsify folder as an SAE record."""
    from conceptkit.sae.formats import read_folder
    from conceptkit.sae.records import to_draft

    kwargs = {"site": site} if site else {}
    sae_obj = read_folder(folder, hookpoint=hookpoint, **kwargs)
    record = _store(store_path).put(to_draft(sae_obj, method="sae-import", config={"source": str(Path(folder).resolve())}))
    click.echo(record.id)

