"""HTML renderings for Jupyter (``_repr_html_``) of results, records and models.

Plain tables, no scripts or styles beyond inline ones, so they read the same in JupyterLab,
VS Code and a static HTML export. Long values are shortened; tensors show their shape.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any

MAX_CELL = 200


def cell(value: Any) -> str:
    """One value as escaped, shortened text (a tensor as its shape and dtype)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        text = f"tensor {list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list, tuple)):
        try:
            text = json.dumps(value, default=lambda v: cell(v))
        except (TypeError, ValueError):
            text = str(value)
    else:
        text = str(value)
    if len(text) > MAX_CELL:
        text = text[: MAX_CELL - 3] + "..."
    return html.escape(text)


def table(rows: list[tuple[str, Any]], title: str | None = None) -> str:
    """A two-column key/value table."""
    head = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{cell(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table class='conceptkit'>{head}{body}</table>"


def png_img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' style='max-width:100%'/>"


def result_html(result: Any) -> str:
    """A result: its summary, its fields, and its figure when ``plot`` makes one."""
    hidden = {"config", "record_ids", "input_fingerprints", "provenance"}
    rows = [(k, getattr(result, k)) for k in type(result).model_fields if k not in hidden]
    if result.record_ids:
        rows.append(("stored records", ", ".join(r[:12] for r in result.record_ids)))
    parts = [table(rows, title=f"conceptkit result: {result.method or type(result).__name__}")]
    try:
        summary = result.summary()
    except Exception as exc:  # a repr must never raise
        summary = f"(summary failed: {type(exc).__name__}: {exc})"
    parts.append(f"<pre>{html.escape(summary)}</pre>")
    if result.config:
        parts.append(f"<details><summary>config</summary><pre>{html.escape(json.dumps(result.config, indent=2, default=str))}</pre></details>")
    parts.append(plot_html(result))
    return "".join(parts)


def plot_html(result: Any) -> str:
    """The result's figure as an inline PNG, or nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            written = result.plot(Path(tmp) / "figure.png")
        except Exception as exc:  # a figure that fails must not hide the table
            return f"<p>(plot failed: {html.escape(type(exc).__name__)}: {html.escape(str(exc))})</p>"
        if written is None or not Path(written).is_file():
            return ""
        return png_img(Path(written))


def record_html(record: Any) -> str:
    """A record: what it is, and its provenance (who made it, from what, on which model)."""
    m, model = record.method, record.model or {}
    what = [
        ("id", record.id),
        ("concept", record.concept),
        ("kind", record.kind),
        ("site", record.site),
        ("reduction", record.reduction),
        ("tensors", {k: f"{v.shape} {v.dtype}" for k, v in record.tensors.items()}),
        ("metrics", record.metrics),
        ("tags", record.tags),
        ("parents", [p[:12] for p in record.parents]),
        ("created", record.created_at.isoformat(timespec="seconds")),
    ]
    provenance = [
        ("method", m.name),
        ("plugin", m.plugin),
        ("distribution", f"{m.distribution or '?'} {m.version or ''}".strip()),
        ("model", model.get("name")),
        ("model revision", model.get("revision")),
        ("weights hash", model.get("weights_hash")),
        ("backend", model.get("backend")),
        ("inputs", m.inputs),
        ("examples fingerprint", record.examples_fingerprint),
        ("conceptkit", record.conceptkit_version),
    ]
    config = f"<details><summary>config</summary><pre>{html.escape(json.dumps(m.config, indent=2, default=str))}</pre></details>"
    return table(what, title=f"conceptkit record {record.short_id}") + table(provenance, title="provenance") + config


def model_html(model: Any) -> str:
    """A model: name, backend, size and how many sites it offers."""

    def safe(fn: Any) -> Any:
        try:
            return fn()
        except Exception:
            return "?"

    rows = [
        ("name", model.name),
        ("backend", model.backend_name),
        ("layers", safe(lambda: model.n_layers)),
        ("d_model", safe(lambda: model.d_model)),
        ("vocabulary", safe(lambda: model.vocab_size)),
        ("sites", safe(lambda: len(model.sites()))),
    ]
    return table(rows, title="conceptkit model")
