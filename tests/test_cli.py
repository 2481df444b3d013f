"""The `conceptkit` command: listing, run with configs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pydantic
import pytest

import conceptkit as ck
from conceptkit.cli import main


class EchoConfig(ck.MethodConfig):
    word: str = pydantic.Field("hello", description="what to echo")
    times: int = 1


class EchoResult(ck.Result):
    text: str = ""

    def summary(self) -> str:
        return self.text


class Echo(ck.Method):
    name = "echo"
    description = "Echo a word (needs no model)."
    Config = EchoConfig
    needs_model = False

    def compute(self, model, config, store):
        return EchoResult(text=" ".join([config.word] * config.times))


class EchoPlugin:
    @ck.hookimpl
    def register_methods(self, register):
        register(Echo)

    @ck.hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello-plugin")
        def hello_plugin():
            """A command added by a plugin."""
            click.echo("hello from a plugin")


@pytest.fixture
def echo_plugin():
    from conceptkit import cli as cli_module

    cli_module.ConceptkitGroup._plugins_loaded = False
    cli_module.cli.commands.pop("hello-plugin", None)
    with ck.registered_plugin(EchoPlugin(), name="echo-plugin"):
        yield
    cli_module.cli.commands.pop("hello-plugin", None)
    cli_module.ConceptkitGroup._plugins_loaded = False


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_plugins_json_lists_plugin_methods_and_hooks(capsys, echo_plugin):
    """`conceptkit plugins --json` lists each plugin with distribution, version, methods, hooks."""
    code, out, _ = run_cli(capsys, "plugins", "--json")
    data = json.loads(out)
    names = {p["name"]: p for p in data["plugins"]}
    assert code == 0 and names["echo-plugin"]["methods"] == ["echo"]
    assert "register_commands" in names["echo-plugin"]["hooks"]
    assert data["failures"] == []


def test_methods_and_models_listings(capsys, echo_plugin):
    """`methods --json` and `models --json` reflect the registries."""
    _, out, _ = run_cli(capsys, "methods", "--json")
    listed = json.loads(out)
    assert {"name": "echo", "plugin": "echo-plugin", "requires": [], "supports_ray": False, "description": Echo.description} in listed
    assert {m["name"]: m["supports_ray"] for m in listed if m["name"] in ("erasure", "rocr", "tcav")} == {"erasure": True, "rocr": True, "tcav": False}
    _, out, _ = run_cli(capsys, "models", "--json")
    assert {"smollm2-135m", "minilm-l6", "tiny-llama"} <= {m["name"] for m in json.loads(out)}


def test_run_help_shows_config_fields_and_defaults(capsys, echo_plugin):
    """`run METHOD --help` documents the Config's fields, types, defaults and descriptions."""
    code, out, _ = run_cli(capsys, "run", "echo", "--help")
    assert code == 0
    assert 'word (string; default: "hello") what to echo' in out
    assert "times (integer; default: 1)" in out


def test_run_with_yaml_json_and_set(capsys, echo_plugin, tmp_path):
    """Config files (YAML, JSON) and --set overrides reach the method."""
    (tmp_path / "c.yaml").write_text("word: yo\ntimes: 2\n")
    (tmp_path / "c.json").write_text('{"word": "hey"}')
    assert run_cli(capsys, "run", "echo", "--config", str(tmp_path / "c.yaml"), "--no-store")[1].strip() == "yo yo"
    assert run_cli(capsys, "run", "echo", "--config", str(tmp_path / "c.json"), "--set", "times=3", "--no-store")[1].strip() == "hey hey hey"


@pytest.mark.parametrize(
    ("args", "files", "needle"),
    [
        (["run", "ecko"], {}, "unknown method 'ecko'; did you mean 'echo'"),
        (["run", "echo", "--set", "colour=red"], {}, "unknown field 'colour'"),
        (["run", "echo", "--set", "times=many"], {}, "field 'times'"),
        (["run", "echo", "--config", "{d}/bad.yaml"], {"bad.yaml": "word: [unclosed\n"}, "is not valid YAML"),
        (["run", "echo", "--config", "{d}/bad.json"], {"bad.json": "{word: 1"}, "is not valid JSON"),
        (["run", "echo", "--config", "{d}/list.yaml"], {"list.yaml": "- 1\n- 2\n"}, "must hold a mapping"),
        (["run", "echo", "--config", "{d}/missing.yaml"], {}, "does not exist"),
        (["run", "echo", "--set", "novalue"], {}, "--set expects key=value, got 'novalue'"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(capsys, echo_plugin, tmp_path, args, files, needle):
    """Bad input prints one `error:` line naming the culprit and exits 1, no traceback."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code, _, err = run_cli(capsys, *[a.format(d=tmp_path) for a in args])
    assert code == 1
    assert err.startswith("error: ") and needle in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_debug_flag_shows_the_traceback(echo_plugin):
    """With --debug the original exception propagates (for bug reports)."""
    with pytest.raises(ck.ConceptkitError):
        main(["--debug", "run", "echo", "--set", "colour=red"])


def test_plugin_commands_are_added(capsys, echo_plugin):
    """register_commands adds subcommands to the root group."""
    code, out, _ = run_cli(capsys, "hello-plugin")
    assert code == 0 and out.strip() == "hello from a plugin"


def test_run_stores_results(capsys, tmp_path):
    """`run --store PATH` saves the result's drafts to that store."""
    import torch

    class Saver(Echo):
        name = "saver"

        def compute(self, model, config, store):
            class R(EchoResult):
                def drafts(self):
                    return [ck.RecordDraft(tensors=torch.ones(4), concept=config.word)]

            return R(text="saved")

    class Plugin:
        @ck.hookimpl
        def register_methods(self, register):
            register(Saver)

    with ck.registered_plugin(Plugin(), name="saver"):
        code, out, err = run_cli(capsys, "run", "saver", "--store", str(tmp_path / "s"), "--set", "word=kept")
    assert code == 0 and "stored 1 record(s)" in err
    assert [r.concept for r in ck.open_store(tmp_path / "s").find()] == ["kept"]


def test_console_script_entry_point_runs():
    """The installed `conceptkit` script works in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "conceptkit.cli", "plugins", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plugins"][0]["name"] == "conceptkit"


def test_example_configs_validate():
    """The example configs in docs/examples validate against their methods' Config schemas."""
    from pathlib import Path

    from conceptkit.config_io import load_config_file
    from conceptkit.contract import validate_config

    root = Path(__file__).resolve().parents[1] / "docs" / "examples"
    for name in ("tcav", "erasure"):
        method = ck.method(name)
        validate_config(method.Config, load_config_file(root / f"{name}.yaml"), name)
