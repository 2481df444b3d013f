"""``conceptkit capture``: activations of a text file at sites, in one process or over Ray.

Only this (driver) process writes ``--out``; with ``--ray`` the workers return tensors and the
folder appears only once every shard arrived (docs/scale-out.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from conceptkit.errors import InputError


def _reduce(value: str) -> object:
    if value in ("last", "first", "mean", "all"):
        return value
    try:
        return [int(p) for p in value.split(",")]
    except ValueError:
        raise InputError(f"--reduce must be last, first, mean, all or positions like 0,-1; got {value!r}") from None


def _texts(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{str(path)!r} holds no texts (one text per line)")
    return lines


@click.command()
@click.option("--model", "model_name", required=True, help="model name (conceptkit models) or local path")
@click.option("--backend", default="transformer_lens", show_default=True, help="backend that loads the model")
@click.option("--site", "sites", multiple=True, required=True, help="site to capture (repeat for several)")
@click.option("--texts", "texts_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="text file, one example per line")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder for the safetensors shards (must not exist or be empty)")
@click.option("--reduce", "reduce", default="last", show_default=True, help="last, first, mean, all or positions 0,-1")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="run over Ray workers; optional ADDRESS (auto, ray://host:10001) joins a cluster")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray workers (with --ray)")
@click.option("--shards", default=None, type=click.IntRange(min=1), help="Ray shards (default 4 per worker)")
def capture(model_name: str, backend: str, sites: tuple[str, ...], texts_file: Path, out: Path, reduce: str,
            batch_size: int, ray_address: str | None, workers: int, shards: int | None) -> None:
    """Capture activations of every line of --texts at --site into --out (reopen with
    conceptkit.open_activations)."""
    texts = _texts(texts_file)
    red = _reduce(reduce)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {str(out)!r} exists and is not empty")
    if ray_address is not None:
        from conceptkit.scale import ray_capture

        acts = ray_capture(model_name, texts, list(sites), red, backend=backend, workers=workers,  # type: ignore[arg-type]
                           address=None if ray_address == "local" else ray_address, batch_size=batch_size,
                           shards=shards, stream_to=out)
        how = f"over {workers} Ray worker(s)"
    else:
        from conceptkit.models import load_model

        model = load_model(model_name, backend=backend)
        acts = model.capture(texts, list(sites), red, batch_size=batch_size, stream_to=str(out))  # type: ignore[arg-type]
        how = "in one process"
    shapes = ", ".join(f"{s} {list(acts[s].shape)}" for s in acts.sites)
    click.echo(f"captured {len(texts)} texts {how}: {shapes} -> {out}")
