"""ObsProp results: head rankings, features with provenance, coupling matrices, plots, store drafts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

import conceptkit as ck
from conceptkit.api import RecordDraft


class FeatureRow(pydantic.BaseModel):
    observable: str
    path: str  # "attn17.14@-1 <= mlp3@-1", latest first
    nodes: list[dict[str, Any]]
    site: str
    token: int
    norm: float  # |y| before normalisation
    boundary_t: list[float] = pydantic.Field(default_factory=list)


class ObsPropResult(ck.Result):
    observables: list[str] = pydantic.Field(default_factory=list)
    conventions: dict[str, Any] = pydantic.Field(default_factory=dict)
    n_layers: int = 0
    n_heads: int = 0
    head_norms: dict[str, list[list[float]]] = pydantic.Field(default_factory=dict, repr=False)  # data-free, no norm factors
    head_norms_ln: dict[str, list[list[float]]] = pydantic.Field(default_factory=dict, repr=False)  # with norm factors
    top_heads: dict[str, list[dict[str, Any]]] = pydantic.Field(default_factory=dict)
    features: list[FeatureRow] = pydantic.Field(default_factory=list)
    vectors: dict[str, list[float]] = pydantic.Field(default_factory=dict, repr=False)  # "observable|path" -> y
    raw_cosine: list[list[float]] = pydantic.Field(default_factory=list)  # cos(W_U n_i, W_U n_j)
    coupling: dict[str, dict[str, Any]] = pydantic.Field(default_factory=dict)  # path -> {coupling, cosine}
    patching: dict[str, dict[str, Any]] = pydantic.Field(default_factory=dict)  # observable -> search results
    prompt_pair: list[str] | None = None

    # -- access -------------------------------------------------------------------------------------
    def vector(self, observable: str, path: str) -> Any:
        import torch

        key = f"{observable}|{path}"
        if key not in self.vectors:
            raise KeyError(f"no feature for observable {observable!r} along {path!r}; have {sorted(self.vectors)}")
        return torch.tensor(self.vectors[key])

    def scorable(self, keys: list[str] | None = None) -> list[Any]:
        """The stored features (``"observable|path"`` keys, default all) as objects for :mod:`scoring`."""
        from conceptkit_obsprop.features import Feature

        rows = {f"{f.observable}|{f.path}": f for f in self.features}
        out = []
        for key in keys or list(rows):
            if key not in rows:
                raise KeyError(f"no feature {key!r}; have {sorted(rows)}")
            f = rows[key]
            out.append(Feature(observable=f.observable, path=[], y=self.vector(f.observable, f.path), norm=f.norm, site=f.site, token=f.token))
        return out

    def score(self, model: Any, inputs: Any, keys: list[str] | None = None, *, chunk: int = 16, batch_size: int = 8) -> Any:
        """Scores ``[n_tokens, n_features]`` of every real token of ``inputs`` (texts, streamed in chunks)."""
        from conceptkit_obsprop.scoring import chunks, score_tokens

        return score_tokens(model, self.scorable(keys), chunks(list(inputs), chunk), batch_size=batch_size)

    # -- text ---------------------------------------------------------------------------------------
    def summary(self) -> str:
        c = self.conventions
        lines = [
            f"ObsProp on {len(self.observables)} observable(s); final norm {c.get('ln_mode')}, node norms {c.get('node_norm')}, "
            f"MLPs {c.get('mlp_mode')}, normalised {c.get('normalize')}",
        ]
        for obs, rows in self.top_heads.items():
            lines.append(f"top heads for {obs!r} (data-free feature norm | with norm factors: value, rank)")
            for i, r in enumerate(rows):
                lines.append(f"  {i + 1:>2}. {r['layer']:>2}.{r['head']:<2}  {r['norm']:9.3f} | {r['norm_ln']:9.3f}  (#{r['rank_ln']})")
        if self.raw_cosine and len(self.observables) > 1:
            lines.append(f"raw observables' cosine after W_U: {self.raw_cosine[0][1]:.4f}")
        for path, m in self.coupling.items():
            lines.append(f"coupling C(row, col) / cosine along {path}: C={m['coupling'][0][1:]}, cos={m['cosine'][0][1:]}")
        for obs, p in self.patching.items():
            lines.append(f"path patching for {obs!r} (top paths of each length)")
            for length, paths in enumerate(p["paths"], 1):
                for q in paths[:3]:
                    lines.append(f"  len {length}: {q['label']:<48} {q['contrib']:8.4f}")
        for f in self.features:
            lines.append(f"feature {f.observable!r} along {f.path}: score at {f.site} token {f.token}, |y| = {f.norm:.4g}")
        return "\n".join(lines)

    # -- plots ---------------------------------------------------------------------------------------
    def plot(self, path: str | Path) -> Path:
        """Feature-norm heatmaps (layers x heads), without and with norm factors, per observable."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        obs = [o for o in self.observables if o in self.head_norms]
        fig, axes = plt.subplots(len(obs), 2, figsize=(8, 0.25 * self.n_layers * len(obs) + 1.5), squeeze=False)
        for row, o in zip(axes, obs):
            for ax, (data, title) in zip(row, [(self.head_norms[o], "feature norm"), (self.head_norms_ln[o], "with norm factors")]):
                im = ax.imshow(data, aspect="auto", cmap="viridis")
                ax.set_xlabel("head")
                ax.set_ylabel("layer")
                ax.set_title(f"{o}: {title}", fontsize=9)
                fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    # -- store ---------------------------------------------------------------------------------------
    def drafts(self) -> list[RecordDraft]:
        import torch

        out = []
        for f in self.features:
            y = torch.tensor(self.vectors[f"{f.observable}|{f.path}"], dtype=torch.float32)
            out.append(
                RecordDraft(
                    tensors={"feature": y},
                    concept=f"obsprop: {f.observable}",
                    description=f"ObsProp feature of {f.observable!r} along {f.path} (score at {f.site}, token {f.token})",
                    kind="vector",
                    model=self.model_ref,
                    site=f.site,
                    reduction=[f.token],
                    metrics={
                        "observable": f.observable,
                        "path": f.path,
                        "feature_norm": f.norm,
                        "ln_mode": self.conventions.get("ln_mode"),
                        "node_norm": self.conventions.get("node_norm"),
                        "mlp_mode": self.conventions.get("mlp_mode"),
                        "normalized": bool(self.conventions.get("normalize")),
                        "weights_processed": bool(self.conventions.get("weights_processed")),
                        "linearisation_prompts": list(self.prompt_pair or []),
                        "boundary_t": list(f.boundary_t),
                    },
                    tags=["obsprop"],
                )
            )
        return out


def plot_coupling(x: Any, y: Any, fit: dict[str, Any], predicted: float, path: str | Path, title: str = "") -> Path:
    """Scatter of two features' scores with the best-fit line and the predicted slope ``C``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(x, y, s=2, alpha=0.25, color="#1f77b4", rasterized=True)
    lo, hi = float(min(x)), float(max(x))
    ax.plot([lo, hi], [fit["intercept"] + fit["slope"] * lo, fit["intercept"] + fit["slope"] * hi], color="black",
            label=f"fit: slope {fit['slope']:.3f}, r² {fit['r2']:.3f}")
    ax.plot([lo, hi], [fit["intercept"] + predicted * lo, fit["intercept"] + predicted * hi], color="#d62728", ls="--",
            label=f"predicted C = {predicted:.3f}")
    ax.set_xlabel("feature 1 score")
    ax.set_ylabel("feature 2 score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
