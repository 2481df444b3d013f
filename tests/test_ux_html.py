"""Jupyter renderings: results, records and models have ``_repr_html_`` tables that never raise."""

from __future__ import annotations

from pathlib import Path

import torch

import conceptkit as ck


class _Plotted(ck.Result):
    score: float = 0.5
    vector: torch.Tensor = torch.zeros(3)

    def plot(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, self.score])
        fig.savefig(path)
        plt.close(fig)
        return Path(path)


class _Broken(ck.Result):
    def plot(self, path):
        raise RuntimeError("no figure <today>")


def test_result_html_has_fields_summary_and_inline_png():
    """A result renders its fields (tensors by shape), its summary and its figure as a base64 PNG."""
    html = _Plotted(method="m")._repr_html_()
    assert "conceptkit result: m" in html and "score" in html and "tensor [3] float32" in html
    assert "data:image/png;base64," in html


def test_result_html_survives_a_failing_plot():
    """A plot that raises shows as an escaped note; the table is still there."""
    html = _Broken(method="b")._repr_html_()
    assert "conceptkit result: b" in html and "plot failed" in html and "&lt;today&gt;" in html


def test_record_and_model_html(ck_tiny_model, ck_store):
    """A record shows its provenance table; a model its name, backend, layers, d_model and site count."""
    model = ck_tiny_model("tiny-llama")
    record = ck_store.put(ck.RecordDraft(tensors={"vector": torch.ones(4)}, concept="c", site="blocks.0.hook_resid_post", model=model.ref.model_dump()))
    html = record._repr_html_()
    assert "conceptkit record " + record.short_id in html and "provenance" in html and "tiny-llama" in html
    mhtml = model._repr_html_()
    for text in ("tiny-llama", "transformer_lens", "<td style='text-align:left'>2</td>", "64", str(len(model.sites()))):
        assert text in mhtml
