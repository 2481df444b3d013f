"""docs/walkthrough.ipynb runs top to bottom on the tiny models and renders conceptkit objects as HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.ipynb"


def _html_outputs(nb) -> list[str]:
    return [
        out["data"]["text/html"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "text/html" in out.get("data", {})
    ]


def test_walkthrough_executes_and_renders_html(tmp_path, monkeypatch):
    """Every cell runs without error; the model, the result (with its inline figure) and the record show as HTML tables."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CONCEPTKIT_STORE": str(tmp_path / "store"), "CONCEPTKIT_PROGRESS": "0", "MPLBACKEND": "Agg"}
    for key, value in env.items():  # the kernel inherits the test's environment
        monkeypatch.setenv(key, value)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    (tmp_path / "executed.ipynb").write_text(nbformat.writes(nb))
    html = _html_outputs(nb)
    assert any("conceptkit model" in h and "tiny-llama" in h for h in html)
    assert any("conceptkit result: biaslens" in h and "data:image/png;base64," in h for h in html)
    assert any("conceptkit record" in h and "provenance" in h and "biaslens" in h for h in html)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
