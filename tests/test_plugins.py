"""The plugin manager: loading, allow/deny lists, listing and error isolation."""

from __future__ import annotations

import warnings

import pytest

import conceptkit as ck
from conceptkit.errors import UnknownNameError

GOOD = """
import conceptkit as ck

class Good(ck.Method):
    name = "good"
    description = "a method that needs no model"
    needs_model = False

    def compute(self, model, config, store):
        return ck.Result()

@ck.hookimpl
def register_methods(register):
    register(Good)
"""

IMPORT_ERROR = "raise ImportError('no module named frobnicate')\n"

RAISING = """
import conceptkit as ck

class Half(ck.Method):
    name = "half"

@ck.hookimpl
def register_methods(register):
    register(Half)
    raise RuntimeError("registration exploded")
"""

DUPLICATE = """
import conceptkit as ck

class Other(ck.Method):
    name = "good"

@ck.hookimpl
def register_methods(register):
    register(Other)
"""

UNKNOWN_HOOK = """
import conceptkit as ck

@ck.hookimpl
def register_widgets(register):
    pass
"""

BAD_ARGUMENT = """
import conceptkit as ck

@ck.hookimpl
def register_methods(register, colour):
    pass
"""


def _quiet_failures() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ck.plugin_failures()


def test_core_plugin_is_listed_with_distribution_and_hooks():
    """`plugins()` lists the core's own plugin with its distribution, version and hooks."""
    core = next(p for p in ck.plugins() if p["name"] == "conceptkit")
    assert core["distribution"] == "conceptkit"
    assert core["version"] == ck.__version__
    assert set(core["hooks"]) == {"register_backends", "register_models", "register_components"}
    assert {"transformer_lens", "nnsight", "diffusers"} <= set(core["backends"])


def test_entry_point_plugin_is_loaded_and_its_method_runs(fake_distribution):
    """A plugin found through the entry-point group registers its method."""
    fake_distribution("ck-good", "ck_good", GOOD)
    assert "good" in ck.methods()
    info = next(p for p in ck.plugins() if p["name"] == "ck_good")
    assert info["distribution"] == "ck-good" and info["methods"] == ["good"]
    assert ck.method("good").run().method == "good"


@pytest.mark.parametrize(
    ("source", "stage", "needle"),
    [
        (IMPORT_ERROR, "import", "frobnicate"),
        (RAISING, "register_methods", "registration exploded"),
        (UNKNOWN_HOOK, "validate", "register_widgets"),
        (BAD_ARGUMENT, "validate", "colour"),
    ],
)
def test_broken_plugin_is_reported_by_name_and_others_still_load(fake_distribution, source, stage, needle):
    """Import errors, raising hooks, unknown hooks and bad hook arguments name the culprit."""
    fake_distribution("ck-good", "ck_good", GOOD)
    fake_distribution("ck-broken", "ck_broken", source)
    failures = _quiet_failures()
    assert len(failures) == 1
    failure = failures[0]
    assert failure.plugin == "ck_broken" and failure.distribution == "ck-broken"
    assert failure.stage == stage and needle in failure.reason
    assert "ck-broken" in str(failure)
    assert "good" in ck.methods()  # the healthy plugin is unaffected
    assert "half" not in ck.methods()  # a plugin that raised mid-registration leaves nothing behind


def test_duplicate_method_name_is_reported_naming_both_and_chosen_explicitly(fake_distribution, monkeypatch):
    """Two distributions claiming one method name: no order decides; both are named; the user chooses.

    (Issue 10 changed this rule: the first registration used to win by alphabetical order.)
    """
    fake_distribution("ck-a-good", "ck_a_good", GOOD)
    fake_distribution("ck-z-dup", "ck_z_dup", DUPLICATE)
    failures = _quiet_failures()
    assert {f.stage for f in failures} == {"conflict"} and {f.distribution for f in failures} == {"ck-a-good", "ck-z-dup"}
    assert all("'good'" in f.reason for f in failures)
    with pytest.raises(ck.PluginError, match="ck-a-good.*ck-z-dup"):
        ck.method("good")
    assert "good" not in ck.methods()
    assert type(ck.method("good", plugin="ck-z-dup")).__module__ == "ck_z_dup"
    assert type(ck.method("good", plugin="ck-a-good")).__module__ == "ck_a_good"
    monkeypatch.setenv("CONCEPTKIT_METHOD_PLUGINS", "good=ck-z-dup")
    import conceptkit.plugin_manager as p

    p.reset()
    assert ck.methods()["good"].__module__ == "ck_z_dup" and _quiet_failures() == []


def test_failures_are_warned_once_on_load(fake_distribution):
    """Loading warns about each broken plugin (so scripts notice), naming it."""
    fake_distribution("ck-broken", "ck_broken", IMPORT_ERROR)
    with pytest.warns(RuntimeWarning, match="ck_broken"):
        ck.plugins()


def test_allow_list_env_var(fake_distribution, monkeypatch):
    """CONCEPTKIT_LOAD_PLUGINS loads only the named plugins; empty loads none (the core stays)."""
    fake_distribution("ck-good", "ck_good", GOOD)
    monkeypatch.setenv("CONCEPTKIT_LOAD_PLUGINS", "")
    import conceptkit.plugin_manager as p

    p.reset()
    assert [x["name"] for x in ck.plugins()] == ["conceptkit"]
    monkeypatch.setenv("CONCEPTKIT_LOAD_PLUGINS", "ck-good")  # a distribution name works too
    p.reset()
    assert "good" in ck.methods()


def test_disable_env_var(fake_distribution, monkeypatch):
    """CONCEPTKIT_DISABLE_PLUGINS skips the named plugins."""
    fake_distribution("ck-good", "ck_good", GOOD)
    monkeypatch.setenv("CONCEPTKIT_DISABLE_PLUGINS", "ck_good")
    import conceptkit.plugin_manager as p

    p.reset()
    assert "good" not in ck.methods()


def test_unknown_method_suggests_close_names(fake_distribution):
    """An unknown method name is an error that names it and suggests the closest."""
    fake_distribution("ck-good", "ck_good", GOOD)
    with pytest.raises(UnknownNameError, match=r"unknown method 'goood'.*'good'"):
        ck.method("goood")


def test_registered_plugin_context_manager_adds_and_removes():
    """`registered_plugin` registers an in-process plugin only inside the block."""

    class Tmp(ck.Method):
        name = "tmp-method"
        needs_model = False

    class Plugin:
        @ck.hookimpl
        def register_methods(self, register):
            register(Tmp)

    with ck.registered_plugin(Plugin(), name="tmp"):
        assert "tmp-method" in ck.methods()
    assert "tmp-method" not in ck.methods()


def test_register_rejects_non_method_classes():
    """Registering something that is not a Method subclass is a reported failure."""

    class Plugin:
        @ck.hookimpl
        def register_methods(self, register):
            register(dict)

    with ck.registered_plugin(Plugin(), name="bad"):
        failures = _quiet_failures()
    assert any(f.plugin == "bad" and "not a conceptkit.Method" in f.reason for f in failures)


def test_record_saved_event_hook_fires(ck_store):
    """The record_saved event reaches plugins with the new record."""
    import torch

    seen = []

    class Listener:
        @ck.hookimpl
        def record_saved(self, record, store):
            seen.append(record.concept)

    with ck.registered_plugin(Listener(), name="listener"):
        ck_store.put(ck.RecordDraft(tensors=torch.ones(3), concept="event"))
    assert seen == ["event"]


def test_every_hookspec_is_documented_and_tested():
    """Meta-test (datasette style): each hookspec appears in docs/plugin-hooks.md and in a test."""
    from pathlib import Path

    from conceptkit import hookspecs

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "plugin-hooks.md").read_text()
    tests = "".join(p.read_text() for p in (root / "tests").glob("test_*.py"))
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "record_")) and callable(getattr(hookspecs, n))]
    assert names
    for name in names:
        assert f"## {name}" in docs, f"hook {name} is not documented"
        assert f"def {name}(" in tests, f"hook {name} is not exercised by a test"


def test_third_party_backend_is_asked_to_recognise_objects():
    """A backend registered by a plugin wraps the objects it recognises."""

    class Toy:
        pass

    class ToyModel(ck.Model):
        backend_name = "toy"

    class ToyBackend:
        def recognises(self, obj):
            return isinstance(obj, Toy)

        def wrap(self, obj, **kwargs):
            return ToyModel(tokenizer=None, name="toy")

    class Plugin:
        @ck.hookimpl
        def register_backends(self, register):
            register("toy", ToyBackend())

    with ck.registered_plugin(Plugin(), name="toy-backend"):
        assert isinstance(ck.wrap(Toy()), ToyModel)
    with pytest.raises(ck.ConceptkitError, match="no backend recognises an object of type .*Toy"):
        ck.wrap(Toy())


def test_third_party_named_model_is_loadable():
    """A model registered by a plugin is listed and loaded by name."""
    loaded = []

    class Plugin:
        @ck.hookimpl
        def register_models(self, register):
            register("toy-model", lambda backend, **kw: loaded.append(backend) or "a model", "a toy", ("nnsight",))

    with ck.registered_plugin(Plugin(), name="toy-models"):
        assert ck.load_model("toy-model", backend="nnsight") == "a model"
        with pytest.raises(ck.ConceptkitError, match="not available for backend 'transformer_lens'"):
            ck.load_model("toy-model", backend="transformer_lens")
    assert loaded == ["nnsight"]


def test_helpers_named_like_hooks_are_not_mistaken_for_hooks(fake_distribution):
    """Only functions marked with conceptkit.hookimpl count as hook implementations."""
    fake_distribution("ck-helper", "ck_helper", GOOD + "\n\ndef register_everything_helper():\n    pass\n")
    assert _quiet_failures() == [] and "good" in ck.methods()
