"""Embedded SAEs: trained once into the user cache on first use, then loaded in a second.

No pretrained SAE for the embedded models can be downloaded, so ``load_sae("smollm2-135m",
site=...)`` trains one the first time (like the GGUF-to-safetensors conversion of the model),
from the offline corpus (:mod:`conceptkit.sae.corpus`) with the seeded TopK trainer, shows a
progress bar and an estimate, writes a SAELens folder under ``<cache>/sae/`` and stores the SAE
as a record (kind ``sae``) with its provenance: corpus fingerprint, training settings, build
time and held-out figures. Later calls read the folder (and re-store the record if the store
lost it: ids are content hashes, so it is the same record).

The recipe is fixed per name (below), so every machine with the same installation builds the
same SAE bit for bit; only the time it takes differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pydantic
import torch
from safetensors.torch import load_file, save_file

from conceptkit.errors import UnknownNameError
from conceptkit.sae.base import SAE


class Recipe(pydantic.BaseModel):
    """How an embedded SAE is built (all of it goes into the record's provenance)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    model: str
    default_site: str
    d_sae: int
    k: int
    train_tokens: int
    epochs: int
    context: int = 128
    skip_first: int = 1
    max_norm_ratio: float = 10.0
    batch_size: int = 1024
    lr_scale: float = 4.0
    dead_tokens: int = 100_000
    seed: int = 0
    quick_eval_tokens: int = 8192
    sources: tuple[str, ...] = ("pydoc", "stdlib", "docstrings", "packages", "project")

    def key(self, site: str) -> str:
        raw = json.dumps({**self.model_dump(), "site": site, "v": 1}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    "smollm2-135m": Recipe(
        model="smollm2-135m", default_site="blocks.12.hook_resid_post", d_sae=4608, k=64,
        train_tokens=40_960, epochs=2, batch_size=512,
    ),
}


def _folder(name: str, site: str, recipe: Recipe) -> Path:
    from conceptkit.models import cache_dir

    return cache_dir() / "sae" / name / f"{site}-{recipe.key(site)}"


def load_sae(
    name: str = "smollm2-135m",
    site: str | None = None,
    *,
    store: Any = None,
    model: Any = None,
    progress: bool | None = None,
    recipe: Recipe | None = None,
    ray: Any = None,
) -> SAE:
    """The embedded SAE ``name`` at ``site``: from the cache, or trained now (once).

    ``store`` receives the record (default: the default store; ``False`` for none). ``recipe``
    overrides the built-in recipe (tests use a quick one). ``ray`` captures the training
    activations over Ray workers (as ``conceptkit.dataset_capture``; default: only inside
    ``conceptkit.use_ray``); the rows, and so the SAE, are the same bits.
    """
    if recipe is None:
        if name not in RECIPES:
            raise UnknownNameError("embedded SAE", name, RECIPES)
        recipe = RECIPES[name]
    site = site or recipe.default_site
    folder = _folder(name, site, recipe)
    if not (folder / "sae_weights.safetensors").exists():
        build(name, site, recipe, folder, model=model, progress=progress, ray=ray)
    from conceptkit.sae.formats import read_saelens

    sae = read_saelens(folder)
    prov = json.loads((folder / "provenance.json").read_text())
    if store is not False:
        if store is None:
            from conceptkit.store import open_store

            store = open_store()
        record = store.put(_draft(sae, prov))
        sae.record_id = record.id
    return sae


def _draft(sae: SAE, prov: dict[str, Any]) -> Any:
    from conceptkit.sae.records import to_draft

    return to_draft(
        sae,
        concept=f"SAE {prov['name']} {sae.site}",
        description=f"embedded TopK SAE for {prov['name']} at {sae.site}, trained by conceptkit on its offline corpus",
        method="sae-train",
        config={"recipe": prov["recipe"], "corpus": prov["corpus"], "build_seconds": prov["build_seconds"]},
        model=prov["model_ref"],
        metrics=prov["metrics"],
        examples_fingerprint=prov["corpus"]["fingerprint"],
        tags=["embedded-sae", prov["name"]],
    )


def _say(message: str) -> None:
    print(f"conceptkit: {message}", file=sys.stderr, flush=True)


def build(name: str, site: str, recipe: Recipe, folder: Path, *, model: Any = None, progress: bool | None = None,
          ray: Any = None) -> Path:
    """Train the embedded SAE into ``folder`` (resumable: activations and checkpoints persist).
    ``ray``: the training activations over Ray workers (:func:`~conceptkit.sae.training_data.chunk_rows`)."""
    from conceptkit.sae import corpus as corpus_mod
    from conceptkit.sae.evaluate import reconstruction_stats, site_rows
    from conceptkit.sae.formats import write_saelens
    from conceptkit.sae.train import TopKTrainer, TrainConfig
    from conceptkit.sae.training_data import chunk_rows
    from conceptkit.scale.dataset import ray_requested

    t_start = time.perf_counter()
    work = folder.parent / f".{folder.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    _say(f"building the {name} SAE at {site} once into {folder} (a one-time cost of several minutes on a laptop CPU)")
    corpus = corpus_mod.build(recipe.sources)
    if model is None:
        from conceptkit.models import load_model

        model = load_model(recipe.model, backend="transformers")
    model.resolve_site(site)
    tok = model.tokenizer
    train = corpus_mod.token_windows(corpus, tok, "train", recipe.context, max_tokens=recipe.train_tokens, seed=recipe.seed)
    held = corpus_mod.token_windows(corpus, tok, "held_out", recipe.context, max_tokens=recipe.quick_eval_tokens, seed=recipe.seed)

    # 1. activations (resumable shard by shard)
    shards = work / "acts"
    shards.mkdir(exist_ok=True)
    chunk = 32
    n_chunks = -(-train["input_ids"].shape[0] // chunk)
    todo = [i for i in range(n_chunks) if not (shards / f"{i:05d}.safetensors").exists()]
    capture_tokens = len(todo) * chunk * recipe.context
    bar = _tqdm(progress, capture_tokens, "capturing activations", "tok")
    t0 = time.perf_counter()
    over_ray = ray_requested(ray)
    rows_of = chunk_rows(model, train, site, todo, chunk=chunk, skip_first=recipe.skip_first,
                         max_norm_ratio=recipe.max_norm_ratio, ray=ray)
    for n_done, (i, rows, n_tokens) in enumerate(rows_of):
        save_file({"rows": rows.contiguous()}, str(shards / f"{i:05d}.safetensors"))  # only this (driver) process writes
        if bar is not None:
            bar.update(n_tokens)
        if n_done == 0 and not over_ray:
            est_capture = (time.perf_counter() - t0) * len(todo)
            probe = TopKTrainer(model.d_model, TrainConfig(d_sae=recipe.d_sae, k=recipe.k, batch_size=min(recipe.batch_size, rows.shape[0])))
            t_step = time.perf_counter()
            probe.train_step(rows[: probe.config.batch_size])
            per_row = (time.perf_counter() - t_step) / probe.config.batch_size
            est_train = per_row * recipe.train_tokens * recipe.epochs
            _say(f"estimated time: capture {est_capture / 60:.1f} min + training {est_train / 60:.1f} min "
                 f"(measured on the first {chunk} windows and one training step)")
    if bar is not None:
        bar.close()
    capture_seconds = time.perf_counter() - t0

    # 2. training (checkpointed; a rerun resumes)
    cfg = TrainConfig(d_sae=recipe.d_sae, k=recipe.k, batch_size=recipe.batch_size, lr_scale=recipe.lr_scale,
                      dead_tokens=recipe.dead_tokens, seed=recipe.seed, checkpoint_every=100)
    ckpt = work / "checkpoint"
    trainer = TopKTrainer.from_checkpoint(ckpt) if (ckpt / "trainer.json").exists() else TopKTrainer(model.d_model, cfg)
    files = sorted(shards.glob("*.safetensors"))
    n_rows = sum(load_file(str(f))["rows"].shape[0] for f in files)
    total_steps = recipe.epochs * (n_rows // recipe.batch_size)

    def stream() -> Any:
        for _ in range(recipe.epochs):
            for f in files:
                yield load_file(str(f))["rows"]

    t1 = time.perf_counter()
    sae = trainer.fit(stream(), checkpoint_dir=ckpt, progress=progress, total_steps=total_steps)
    train_seconds = time.perf_counter() - t1

    # 3. a quick held-out check (conceptkit sae eval gives the full figures)
    metrics = reconstruction_stats(sae, site_rows(model, held, site, skip_first=recipe.skip_first,
                                                  max_norm_ratio=recipe.max_norm_ratio))
    metrics = {f"quick_{k}": v for k, v in metrics.items()}
    metrics.update({"train_fvu_last": trainer.history[-1]["fvu"] if trainer.history else None, "train_rows": n_rows})
    build_seconds = time.perf_counter() - t_start
    sae = SAE(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, architecture="topk", k=recipe.k, site=site, model_name=name,
              metadata={"corpus_fingerprint": corpus.fingerprint, "recipe": recipe.key(site)})
    prov = {
        "name": name,
        "recipe": {**recipe.model_dump(), "site": site},
        "corpus": {"fingerprint": corpus.fingerprint, "sources": list(corpus.sources), **corpus.info,
                   "train_documents": len(corpus.split("train")), "held_out_documents": len(corpus.split("held_out"))},
        "model_ref": model.ref.model_dump(mode="json"),
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
        "build_seconds": round(build_seconds, 1),
        "capture_seconds": round(capture_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_saelens(sae, tmp, provenance=prov)
    (tmp / "provenance.json").write_text(json.dumps(prov, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    shutil.rmtree(work, ignore_errors=True)
    _say(f"built the {name} SAE in {build_seconds / 60:.1f} min (capture {capture_seconds / 60:.1f}, "
         f"training {train_seconds / 60:.1f}); quick held-out FVE {metrics['quick_fve']:.3f}, L0 {metrics['quick_l0']:.1f}")
    return folder


def _tqdm(show: bool | None, total: int, desc: str, unit: str) -> Any:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True)
