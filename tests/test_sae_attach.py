"""SAEs attached to model sites: virtual sites, exact splicing, batching, feature interventions."""

from __future__ import annotations

import json

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit.sae import SAE
from conceptkit.sae.interventions import SAEFeatures
from tests.conftest import load_cached

SITE = "blocks.0.hook_resid_post"
TEXTS = ["the cat sat", "a much longer sentence here", "hi", "zebra crossing at noon"]
BACKENDS = ["transformer_lens", "nnsight", "transformers"]


def tiny_sae(arch: str = "topk", d_in: int = 64, d_sae: int = 96, seed: int = 0, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    extra = {"k": 8} if arch == "topk" else {"threshold": torch.full((d_sae,), 0.05)} if arch == "jumprelu" else {}
    extra.update(kw)
    return SAE(W_dec.T.clone() * 0.5, torch.randn(d_sae, generator=g) * 0.1, W_dec, torch.randn(d_in, generator=g) * 0.1,
               architecture=arch, site=SITE, **extra)


def names(site: str = SITE) -> list[str]:
    return [f"{site}.{s}" for s in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_virtual_sites_listed_and_removed(backend: str) -> None:
    """attach_sae adds the five SAELens names right after the site; removing the handle undoes it."""
    model = load_cached("tiny-llama", backend)
    before, hooks = model.sites(), model.hook_count()
    with model.attach_sae(tiny_sae()):
        sites = model.sites()
        at = sites.index(SITE)
        assert sites[at + 1 : at + 6] == names()
        model.capture(TEXTS[:1], names()[2])
    assert model.sites() == before and model.hook_count() == hooks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_latents_equal_encode_of_site(backend: str, arch: str) -> None:
    """Latents captured at hook_sae_acts_post equal sae.encode of the captured site, every reduction."""
    model = load_cached("tiny-llama", backend)
    sae = tiny_sae(arch)
    with model.attach_sae(sae):
        for reduce in ("all", "last", "mean"):
            acts = model.capture(TEXTS, [SITE, names()[2], names()[3], names()[4]], reduce=reduce)
            x = acts[SITE]
            if reduce != "mean":
                torch.testing.assert_close(acts[names()[2]], sae.encode(x), atol=1e-6, rtol=0)
                torch.testing.assert_close(acts[names()[3]] + acts[names()[4]], x, atol=1e-5, rtol=0)
            else:
                all_ = model.capture(TEXTS, [names()[2]], reduce="all")
                assert acts[names()[2]].shape == (len(TEXTS), sae.d_sae)
                assert torch.isfinite(all_[names()[2]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_latents_batched_equal_one_by_one(backend: str) -> None:
    """Latents captured in padded batches (left or right) equal those captured one text at a time."""
    model = load_cached("tiny-llama", backend)
    with model.attach_sae(tiny_sae("standard")):
        site = names()[2]
        single = torch.cat([model.capture([t], site, reduce="all")[site] for t in TEXTS])
        for side in ("left", "right"):
            batched = model.capture(TEXTS, site, reduce="all", batch_size=4, padding_side=side)[site]
            torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
        last = torch.cat([model.capture([t], site, reduce="last")[site] for t in TEXTS])
        torch.testing.assert_close(model.capture(TEXTS, site, reduce="last", padding_side="left")[site], last, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_splice_is_exact_no_op(backend: str) -> None:
    """Splicing reconstruction + error (both hooked and rewritten unchanged) leaves the logits bit-identical."""
    model = load_cached("tiny-llama", backend)
    plain = model.run(TEXTS, reduce="all")
    with model.attach_sae(tiny_sae("topk")):
        splice = [iv.Scale(site=names()[3], factor=1.0), iv.Scale(site=names()[4], factor=1.0),
                  iv.Scale(site=names()[2], factor=1.0)]
        assert torch.equal(model.run(TEXTS, splice, reduce="all"), plain)
        assert torch.equal(model.run(TEXTS, reduce="all"), plain)
        model.capture(TEXTS, names())  # reading every virtual site changes nothing either
        assert torch.equal(model.run(TEXTS, reduce="all"), plain)


def test_zero_error_runs_on_the_reconstruction() -> None:
    """Replacing hook_sae_error by zeros runs the model on the SAE's reconstruction."""
    model = load_cached("tiny-llama", "transformers")
    sae = tiny_sae("standard")
    with model.attach_sae(sae):
        spliced = model.run(TEXTS, [iv.Scale(site=names()[4], factor=0.0)], reduce="all")
    x = model.capture(TEXTS, SITE, reduce="all")[SITE]
    hand = model.run(TEXTS, [_ReplaceBy(site=SITE, fn_name="forward", sae=sae)], reduce="all")
    torch.testing.assert_close(spliced, hand, atol=1e-5, rtol=0)
    assert x.shape[0] == spliced.shape[0]


class _ReplaceBy(iv.Intervention):
    """Test helper: x -> sae.forward(x)."""

    op: str = "test_replace_by"
    fn_name: str
    sae: object

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.forward(x)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["clamp", "ablate", "scale", "add"])
def test_feature_intervention_changes_only_that_latent(mode: str) -> None:
    """SAEFeatures moves the activations by (a'_f - a_f) W_dec[f] only: other latents' contributions stay."""
    sae = tiny_sae("standard")
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    acts = sae.encode(x)
    f = int(acts.reshape(-1, sae.d_sae).gt(0).sum(0).argmax())  # a latent that fires
    op = SAEFeatures(sae=sae, features=[f], mode=mode, value=2.5)
    out = op.transform(x)
    old = acts[..., f]
    new = {"clamp": torch.full_like(old, 2.5), "ablate": torch.zeros_like(old), "scale": old * 2.5, "add": old + 2.5}[mode]
    torch.testing.assert_close(out - x, (new - old).unsqueeze(-1) * sae.W_dec[f], atol=1e-5, rtol=0)


def test_feature_clamp_through_the_model_equals_virtual_site_edit() -> None:
    """Clamping a latent by SAEFeatures equals clamping it at hook_sae_acts_post with the SAE spliced in."""
    model = load_cached("tiny-llama", "transformers")
    sae = tiny_sae("standard")
    f = 3
    direct = model.run(TEXTS, [SAEFeatures(sae=sae, features=[f], mode="clamp", value=1.5, positions="last")], reduce="all")

    class ClampAt(iv.Intervention):
        op: str = "test_clamp_at"

        def transform(self, a: torch.Tensor) -> torch.Tensor:
            a = a.clone()
            a[..., f] = 1.5
            return a

    with model.attach_sae(sae):
        via_site = model.run(TEXTS, [ClampAt(site=names()[2], positions="last")], reduce="all")
    torch.testing.assert_close(direct, via_site, atol=1e-5, rtol=0)
    assert not torch.equal(direct, model.run(TEXTS, reduce="all"))


def test_sae_features_json_refers_to_the_record(tmp_path) -> None:
    """SAEFeatures serialises the SAE as its record id (no matrices) and parses back to the same SAE."""
    import conceptkit as ck
    from conceptkit.sae.records import to_draft

    store = ck.open_store(tmp_path / "store")
    sae = tiny_sae("jumprelu")
    record = store.put(to_draft(sae))
    op = SAEFeatures(sae=record.id, features=[1, 2], mode="scale", value=0.5, site=SITE)
    data = json.loads(json.dumps(iv.dump([op])))
    assert data[0]["sae"] == record.id and "W_enc" not in json.dumps(data)
    from conceptkit.sae.registry import resolve_sae

    loaded = resolve_sae(record.id, store)
    back = iv.parse(data[0])
    assert isinstance(back, SAEFeatures) and back.sae == record.id and back.site == SITE
    x = torch.randn(2, 64)
    torch.testing.assert_close(back.transform(x), SAEFeatures(sae=sae, features=[1, 2], mode="scale", value=0.5).transform(x))
    assert loaded.fingerprint() == sae.fingerprint()
    in_memory = SAEFeatures(sae=sae, features=[0])
    assert iv.dump([in_memory])[0]["sae"] == sae.ref and in_memory.site == SITE


def test_virtual_site_spec_from_data(tmp_path) -> None:
    """The 'sae' virtual_site component attaches an SAE given as data (folder path here)."""
    sae = tiny_sae("topk")
    folder = sae.save(str(tmp_path / "sae"))
    model = load_cached("tiny-llama", "transformers")
    with model.add_virtual_sites({"kind": "sae", "sae": str(folder), "site": SITE}):
        acts = model.capture(TEXTS[:2], [SITE, names()[2]], reduce="all")
    torch.testing.assert_close(acts[names()[2]], sae.encode(acts[SITE]), atol=1e-6, rtol=0)


def test_generation_policy_reads_latents_and_steers_with_them() -> None:
    """A generation policy reads SAE latents each step; SAEFeatures returned by it act on the next token."""
    import conceptkit as ck

    model = load_cached("tiny-llama", "transformers")
    sae = tiny_sae("topk")

    class Watch(ck.GenerationPolicy):
        reads = [names()[2]]

        def start(self, prompt_ids, attention_mask) -> None:  # type: ignore[no-untyped-def]
            self.seen: list[torch.Tensor] = []

        def step(self, state):  # type: ignore[no-untyped-def]
            self.seen.append(state.reads[names()[2]])
            return [SAEFeatures(sae=sae, features=[0, 1, 2], mode="clamp", value=40.0)]

    policy = Watch()
    with model.attach_sae(sae):
        plain = model.generate(["the cat"], max_new_tokens=4)
        steered = model.generate(["the cat"], max_new_tokens=4, policy=policy)
    assert policy.seen and all(r.shape == (1, sae.d_sae) and int((r > 0).sum()) <= 8 for r in policy.seen)
    assert list(steered) != list(plain)
