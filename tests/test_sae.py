"""The SAE type and its file formats: exact identities against hand-written references."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conceptkit.sae import SAE, SAEFormatError, read_folder, read_saelens, read_sparsify, write_saelens, write_sparsify

D_IN, D_SAE = 16, 48


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / 4,
        "b_enc": torch.randn(D_SAE, generator=g) / 4,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / 4,
        "b_dec": torch.randn(D_IN, generator=g) / 4,
    }


def make(arch: str, seed: int = 0, **kw) -> SAE:
    w = _weights(seed)
    if arch == "jumprelu":
        kw.setdefault("threshold", torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed + 1)) / 2)
    if arch == "topk":
        kw.setdefault("k", 5)
    return SAE(**w, architecture=arch, site="blocks.0.hook_resid_post", model_name="tiny", **kw)


def reference_encode(w: dict, arch: str, x: torch.Tensor, threshold=None, k=None, b_dec_in=True) -> torch.Tensor:
    """Per-row loops, written independently of the implementation."""
    out = torch.zeros(x.shape[0], D_SAE)
    for r in range(x.shape[0]):
        xi = x[r] - w["b_dec"] if b_dec_in else x[r]
        h = torch.stack([sum(xi[i] * w["W_enc"][i, j] for i in range(D_IN)) + w["b_enc"][j] for j in range(D_SAE)])
        if arch == "standard":
            out[r] = h.clamp_min(0)
        elif arch == "jumprelu":
            out[r] = torch.where(h > threshold, h.clamp_min(0), torch.zeros(()))
        else:
            keep = sorted(range(D_SAE), key=lambda j: -float(h[j]))[:k]
            for j in keep:
                out[r, j] = max(float(h[j]), 0.0)
    return out


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_encode_decode_match_reference(arch: str) -> None:
    """encode/decode/forward equal a hand-written per-row reference for each architecture."""
    sae = make(arch)
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(3))
    ref = reference_encode(_weights(), arch, x, threshold=sae.threshold, k=sae.k)
    acts = sae.encode(x)
    torch.testing.assert_close(acts, ref, atol=1e-5, rtol=0)
    recons = ref @ _weights()["W_dec"] + _weights()["b_dec"]
    torch.testing.assert_close(sae.decode(acts), recons, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.forward(x), sae.decode(sae.encode(x)), atol=0, rtol=0)
    if arch == "topk":
        assert int((acts > 0).sum(-1).max()) <= 5


def test_apply_b_dec_to_input_false() -> None:
    """With apply_b_dec_to_input=False the encoder sees x itself, not x - b_dec."""
    sae = make("standard", apply_b_dec_to_input=False)
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sae.encode(x), reference_encode(_weights(), "standard", x, b_dec_in=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"])
def test_normalisation_modes(mode: str) -> None:
    """Activation normalisation follows SAELens: encode sees norm_in(x); decode undoes it per row."""
    kw = {"norm_scaling_factor": 0.5} if mode == "expected_average_only_in" else {}
    sae = make("standard", normalize_activations=mode, **kw)
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(5)) * 3
    if mode == "constant_norm_rescale":
        c = D_IN**0.5 / x.norm(dim=-1, keepdim=True)
        xn, undo = x * c, (lambda y: y / c)
    elif mode == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        xn, undo = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
    else:
        xn, undo = x * 0.5, (lambda y: y / 0.5)
    plain = make("standard")
    torch.testing.assert_close(sae.encode(x), plain.encode(xn), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.forward(x), undo(plain.forward(xn)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x), x=x), sae.forward(x), atol=1e-5, rtol=1e-5)
    if mode != "expected_average_only_in":
        with pytest.raises(Exception, match="needs the input x"):
            sae.decode(sae.encode(x))


def test_constructor_refuses_bad_shapes() -> None:
    """Wrong shapes, missing thresholds and bad k are refused with the name of the field."""
    w = _weights()
    with pytest.raises(Exception, match="W_dec"):
        SAE(w["W_enc"], w["b_enc"], w["W_dec"].T, w["b_dec"])
    with pytest.raises(Exception, match="threshold"):
        SAE(**w, architecture="jumprelu")
    with pytest.raises(Exception, match="k"):
        SAE(**w, architecture="topk", k=0)
    with pytest.raises(Exception, match="gated"):
        SAE(**w, architecture="gated")
    with pytest.raises(Exception, match="width"):
        make("standard").encode(torch.zeros(2, D_IN + 1))


# -- SAELens folders ------------------------------------------------------------------------------------
def _same(a: SAE, b: SAE) -> None:
    assert a.config() == b.config() and a.metadata == b.metadata
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name
    assert set(a.tensors()) == set(b.tensors())


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_saelens_round_trip_exact(arch: str, tmp_path) -> None:
    """write_saelens then read_saelens gives bit-identical tensors and the same config."""
    sae = make(arch, metadata={"corpus": "abc"})
    folder = write_saelens(sae, tmp_path / arch)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    _same(sae, read_saelens(folder))
    assert read_folder(folder).fingerprint() == sae.fingerprint()


def _write_saelens_by_hand(folder, arch: str, w: dict, extra_cfg: dict | None = None, extra_tensors: dict | None = None):
    """A folder in SAELens 6's documented layout, written without conceptkit."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({**w, **(extra_tensors or {})}, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": arch,
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "prepend_bos": True}}
    cfg.update(extra_cfg or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_reads_hand_written_saelens_folder(arch: str, tmp_path) -> None:
    """A SAELens folder written by hand loads with the right architecture, site and function."""
    w = _weights(2)
    thr = torch.full((D_SAE,), 0.1)
    folder = _write_saelens_by_hand(tmp_path / arch, arch, w, {"k": 7} if arch == "topk" else None,
                                    {"threshold": thr} if arch == "jumprelu" else None)
    sae = SAE.load(str(folder))
    assert (sae.architecture, sae.site, sae.model_name) == (arch, "blocks.3.hook_resid_pre", "gpt2")
    x = torch.randn(3, D_IN, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(sae.encode(x), reference_encode(w, arch, x, threshold=thr, k=7), atol=1e-5, rtol=0)


def test_saelens_legacy_config(tmp_path) -> None:
    """SAELens 5 configs (activation_fn_str, top-level hook_name) are understood."""
    w = _weights()
    folder = _write_saelens_by_hand(tmp_path / "old", "standard", w)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["architecture"], cfg["metadata"]
    cfg.update(activation_fn_str="topk", activation_fn_kwargs={"k": 4}, hook_name="blocks.1.hook_resid_post")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = read_saelens(folder)
    assert (sae.architecture, sae.k, sae.site) == ("topk", 4, "blocks.1.hook_resid_post")


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda f: (f / "cfg.json").write_text(json.dumps({**json.loads((f / "cfg.json").read_text()), "architecture": "gated"})), "cfg.json: field 'architecture'"),
        (lambda f: (f / "cfg.json").write_text(json.dumps({**json.loads((f / "cfg.json").read_text()), "d_sae": 7})), "cfg.json: field 'd_sae'"),
        (lambda f: save_file({**_weights(), "W_dec": torch.zeros(D_SAE, D_IN + 1)}, str(f / "sae_weights.safetensors")), "sae_weights.safetensors: tensor 'W_dec' has shape"),
        (lambda f: save_file({k: v for k, v in _weights().items() if k != "b_enc"}, str(f / "sae_weights.safetensors")), "sae_weights.safetensors: missing tensor 'b_enc'"),
        (lambda f: (f / "cfg.json").write_text("{not json"), "cfg.json: not valid JSON"),
        (lambda f: (f / "cfg.json").write_text(json.dumps({**json.loads((f / "cfg.json").read_text()), "architecture": "topk"})), "cfg.json: field 'k' is missing"),
        (lambda f: (f / "sae_weights.safetensors").write_bytes(b"garbage"), "sae_weights.safetensors: not a readable"),
    ],
)
def test_saelens_errors_name_file_and_field(tmp_path, breakage, message) -> None:
    """A wrong shape, a missing key, an unknown architecture or a corrupt file names file and field."""
    folder = _write_saelens_by_hand(tmp_path / "f", "standard", _weights())
    breakage(folder)
    with pytest.raises(SAEFormatError, match=message.replace("(", r"\(")):
        read_saelens(folder)


# -- sparsify folders -------------------------------------------------------------------------------------
def _write_sparsify_by_hand(folder, w: dict, k: int = 6) -> None:
    """sparsify's documented layout: cfg.json (SparseCoderConfig + d_in) and sae.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": 0, "k": k,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_reads_sparsify_release(tmp_path) -> None:
    """A sparsify release folder (one sub-folder per hookpoint) loads as TopK SAEs at the right sites."""
    w = _weights(5)
    _write_sparsify_by_hand(tmp_path / "release" / "layers.12", w)
    with pytest.raises(SAEFormatError, match="layers.12"):
        read_folder(tmp_path / "release")
    sae = read_folder(tmp_path / "release", hookpoint="layers.12")
    assert (sae.architecture, sae.k, sae.site) == ("topk", 6, "blocks.12.hook_resid_post")
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sae.encode(x), reference_encode(w, "topk", x, k=6), atol=1e-5, rtol=0)
    # sparsify's own encoding: topk of relu(linear(x - b_dec)), decode = sum of picked rows + b_dec
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    vals, idx = pre.topk(6, sorted=False)
    recons = torch.stack([(vals[r, :, None] * w["W_dec"][idx[r]]).sum(0) for r in range(4)]) + w["b_dec"]
    torch.testing.assert_close(sae.forward(x), recons, atol=1e-5, rtol=1e-5)


def test_sparsify_round_trip_exact(tmp_path) -> None:
    """write_sparsify then read_sparsify gives bit-identical weights."""
    sae = make("topk")
    write_sparsify(sae, tmp_path / "layers.0")
    back = read_sparsify(tmp_path / "layers.0")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name))
    assert back.k == sae.k and back.site == "blocks.0.hook_resid_post"


def test_sparsify_package_folder(tmp_path) -> None:
    """A folder written by eai-sparsify's own SparseCoder.save_to_disk reads to the same function."""
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4))
    with torch.no_grad():
        coder.encoder.bias.normal_()
        coder.b_dec.normal_()
    coder.save_to_disk(tmp_path / "layers.2")
    sae = read_folder(tmp_path / "layers.2")
    x = torch.randn(5, D_IN)
    with torch.no_grad():
        out = coder(x)
    torch.testing.assert_close(sae.forward(x), out.sae_out, atol=1e-5, rtol=1e-5)


def test_sparsify_errors(tmp_path) -> None:
    """Unsupported sparsify variants (groupmax, transcoders) are refused naming the field."""
    _write_sparsify_by_hand(tmp_path / "a", _weights())
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(SAEFormatError, match="cfg.json: field 'activation'"):
        read_sparsify(tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "transcode": True}))
    with pytest.raises(SAEFormatError, match="field 'transcode'"):
        read_sparsify(tmp_path / "a")
