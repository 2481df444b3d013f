"""The plugin host against hostile or careless plugins (issue 10 items 5 and 6).

(The real method names are replaced by ``tcavx``: the installed conceptkit-tcav already owns ``tcav``.)
Plugins are identified by distribution; a name collision is reported naming both and decided
by the user, never by alphabetical order; isolation holds against BaseException; plugins cannot
replace core commands; a bad Config, a hook wrapper and a slow import are reported by name.
"""

from __future__ import annotations

import json
import warnings

import pytest

import conceptkit as ck
import conceptkit.cli as cli_module
from conceptkit.cli import main
from tests.adversarial.tally import expect_error, tally

AREA = "plugins"

REAL = """
import conceptkit as ck

class Tcav(ck.Method):
    name = "tcavx"
    needs_model = False

    def compute(self, model, config, store):
        return ck.Result(method="genuine")

@ck.hookimpl
def register_methods(register):
    register(Tcav)
"""

IMPOSTOR = REAL.replace("genuine", "impostor").replace("class Tcav", "class Fake").replace("register(Tcav)", "register(Fake)")

OTHER = """
import conceptkit as ck

class Other(ck.Method):
    name = "other"
    needs_model = False

@ck.hookimpl
def register_methods(register):
    register(Other)
"""


def _failures() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ck.plugin_failures()


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.fixture
def fresh_cli():
    """Let the CLI load plugin commands again, and restore the core commands afterwards."""
    saved = dict(cli_module.cli.commands)
    cli_module.ConceptkitGroup._plugins_loaded = False
    yield
    cli_module.cli.commands.clear()
    cli_module.cli.commands.update(saved)
    cli_module.ConceptkitGroup._plugins_loaded = False


def test_same_entry_point_name_in_two_distributions_loads_both(fake_distribution):
    """A second distribution whose entry point is also named `tcav` hides nothing; both are listed and the clash reported."""
    fake_distribution("conceptkit-tcav-real", "ck_real_tcav", REAL, entry_name="tcavx")
    fake_distribution("aaa-other", "ck_aaa_other", OTHER, entry_name="tcavx")
    dists = {p["distribution"] for p in ck.plugins()}
    assert {"conceptkit-tcav-real", "aaa-other"} <= dists
    assert "tcavx" in ck.methods() and "other" in ck.methods()
    clash = [f for f in _failures() if f.stage == "conflict"]
    assert clash and "conceptkit-tcav-real" in str(clash[0]) + clash[0].reason and "aaa-other" in str(clash[0]) + clash[0].reason
    tally(AREA, "entry point named like another distribution's")


def test_impostor_sorting_first_does_not_win(fake_distribution, monkeypatch):
    """An impostor registering `tcav` under an entry point that sorts first does not win; the user chooses."""
    fake_distribution("conceptkit-tcav-real", "ck_real_tcav", REAL, entry_name="tcavx")
    fake_distribution("aaa-impostor", "ck_aaa_impostor", IMPOSTOR, entry_name="aaa")
    expect_error(AREA, "method name claimed by two distributions", lambda: ck.method("tcavx"), "aaa-impostor.*conceptkit-tcav-real|conceptkit-tcav-real.*aaa-impostor", ck.PluginError)
    assert ck.method("tcavx", plugin="conceptkit-tcav-real").run().method == "tcavx"
    assert type(ck.method("tcavx", plugin="conceptkit-tcav-real")).__module__ == "ck_real_tcav"
    expect_error(AREA, "explicit choice of a plugin that lacks the method", lambda: ck.method("tcavx", plugin="nope"), "not registered by plugin 'nope'", ck.PluginError)
    monkeypatch.setenv("CONCEPTKIT_METHOD_PLUGINS", "tcavx=conceptkit-tcav-real")
    import conceptkit.plugin_manager as p

    p.reset()
    assert type(ck.method("tcavx")).__module__ == "ck_real_tcav"
    tally(AREA, "CONCEPTKIT_METHOD_PLUGINS chooses the distribution")


def test_system_exit_at_import_is_isolated(fake_distribution, capsys, ck_store):
    """A plugin raising SystemExit at import is reported; `plugins --json` and store.put still work."""
    import torch

    fake_distribution("ck-exits", "ck_exits", "raise SystemExit(3)\n")
    fake_distribution("ck-other", "ck_other", OTHER)
    code, out, _ = _cli(capsys, "plugins", "--json")
    data = json.loads(out)
    assert code == 0 and any(f["distribution"] == "ck-exits" and "SystemExit" in f["reason"] for f in data["failures"])
    assert "other" in ck.methods()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ck_store.put(ck.RecordDraft(tensors=torch.ones(2), concept="x")).id in ck_store
    tally(AREA, "SystemExit at import")


def test_system_exit_while_registering_is_isolated(fake_distribution):
    """SystemExit inside a register hook is reported by distribution; other plugins load."""
    fake_distribution("ck-exits", "ck_exits", "import conceptkit as ck\n\n@ck.hookimpl\ndef register_methods(register):\n    raise SystemExit(1)\n")
    fake_distribution("ck-other", "ck_other", OTHER)
    assert "other" in ck.methods()
    assert any(f.distribution == "ck-exits" and "SystemExit" in f.reason for f in _failures())
    tally(AREA, "SystemExit while registering")


def test_non_pydantic_config_is_refused_and_help_still_works(fake_distribution, capsys):
    """A method whose Config is not a pydantic model is refused by distribution; `--help` works for the rest."""
    bad = OTHER.replace('name = "other"', 'name = "badcfg"\n    class Config:\n        pass').replace("class Other", "class Bad").replace("register(Other)", "register(Bad)")
    fake_distribution("ck-badcfg", "ck_badcfg", bad)
    fake_distribution("ck-other", "ck_other", OTHER)
    assert "badcfg" not in ck.methods() and "other" in ck.methods()
    assert any(f.distribution == "ck-badcfg" and "not a pydantic model" in f.reason for f in _failures())
    code, out, _ = _cli(capsys, "run", "--help")
    assert code == 0 and "other" in out
    code, out, _ = _cli(capsys, "run", "other", "--help")
    assert code == 0
    tally(AREA, "non-pydantic Config")


def test_hookwrapper_implementation_is_reported(fake_distribution):
    """A hookwrapper implementation is refused by name instead of silently registering nothing."""
    src = "import conceptkit as ck\n\n@ck.hookimpl(hookwrapper=True)\ndef register_methods(register):\n    yield\n"
    fake_distribution("ck-wrapper", "ck_wrapper", src)
    assert any(f.distribution == "ck-wrapper" and "hook wrapper" in f.reason for f in _failures())
    tally(AREA, "hookwrapper implementation")


def test_plugins_cannot_replace_core_commands(fake_distribution, capsys, fresh_cli, tmp_path):
    """A plugin redefining `store` and `plugins` is refused and reported by distribution; the core commands run."""
    src = """
import click
import conceptkit as ck

@ck.hookimpl
def register_commands(cli):
    @cli.command(name="store")
    def store():
        click.echo("HIJACKED")

    @cli.command(name="plugins")
    def plugins():
        click.echo("HIJACKED")

    @cli.command(name="extra-thing")
    def extra():
        click.echo("extra ok")
"""
    fake_distribution("ck-hijack", "ck_hijack", src)
    code, out, err = _cli(capsys, "extra-thing")
    assert code == 0 and "extra ok" in out
    assert "ck-hijack" in err and "'store'" in err and "'plugins'" in err
    code, out, _ = _cli(capsys, "store", "ls", "--store", str(tmp_path / "s"), "--json")
    assert code == 0 and "HIJACKED" not in out and json.loads(out) == []
    code, out, _ = _cli(capsys, "plugins", "--json")
    assert "HIJACKED" not in out
    tally(AREA, "plugin replacing core commands store/plugins")


def test_slow_plugin_import_is_reported(fake_distribution, monkeypatch):
    """A plugin that is slow to import is reported with its distribution and time (threshold via env)."""
    monkeypatch.setenv("CONCEPTKIT_SLOW_PLUGIN_IMPORT_S", "0.05")
    fake_distribution("ck-slow", "ck_slow", "import time\ntime.sleep(0.3)\n" + OTHER)
    assert "other" in ck.methods()
    slow = [f for f in _failures() if f.stage == "slow-import"]
    assert slow and slow[0].distribution == "ck-slow" and "CONCEPTKIT_DISABLE_PLUGINS" in slow[0].reason
    info = next(p for p in ck.plugins() if p["distribution"] == "ck-slow")
    assert info["import_seconds"] >= 0.3
    tally(AREA, "slow plugin import")


def test_reading_a_record_loads_no_plugin(fake_distribution, ck_store):
    """The store reads a record without importing any plugin (item 9 of issue 9)."""
    import sys

    import torch

    rec = ck_store.put(ck.RecordDraft(tensors=torch.ones(2), concept="x", method=ck.store.MethodInfo(name="m", plugin="ck_marker")))
    fake_distribution("ck-marker", "ck_marker", OTHER)
    import conceptkit.plugin_manager as p

    p.reset()
    assert ck_store.get(rec.id).id == rec.id  # installed: no warning, and no import
    assert "ck_marker" not in sys.modules
    tally(AREA, "store get does not load plugins")


def test_cli_run_of_an_ambiguous_method_names_both_distributions(fake_distribution, capsys):
    """`conceptkit run NAME` for a name two distributions claim says so, naming both (not 'unknown')."""
    fake_distribution("conceptkit-tcav-real", "ck_real_tcav", REAL, entry_name="tcavx")
    fake_distribution("aaa-impostor", "ck_aaa_impostor", IMPOSTOR, entry_name="aaa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = _cli(capsys, "run", "tcavx", "--no-store")
    assert code == 1 and "aaa-impostor" in err and "conceptkit-tcav-real" in err and "CONCEPTKIT_METHOD_PLUGINS" in err
    tally(AREA, "conceptkit run of an ambiguous method")
