"""The plugin-author guide's complete plugin, built and run from the guide's own text.

The guide's code blocks that start with ``# file: PATH`` are written to a temporary folder; the
package is imported from there, its own test module runs against conceptkit's fixtures (Python
and ``conceptkit run ... --json`` through click's runner), and its ``pyproject.toml`` is built
with pip (no dependencies, no isolation: seconds) to check the entry point and version.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugin-authors.md"
BLOCK = re.compile(r"```(?:python|toml)\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.S)


def guide_files() -> dict[str, str]:
    """``{path: text}`` of the guide's file blocks (the ``# file:`` line removed)."""
    return {m["path"]: m["body"] for m in BLOCK.finditer(GUIDE.read_text())}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The guide's plugin written out, importable for the module's tests."""
    root = tmp_path_factory.mktemp("guide") / "conceptkit-meanshift"
    for rel, text in guide_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sys.path.insert(0, str(root))
    sys.modules.pop("conceptkit_meanshift", None)
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("conceptkit_meanshift", None)


def test_guide_has_the_three_files():
    """The guide carries the whole plugin: pyproject, module and its test."""
    assert set(guide_files()) == {"pyproject.toml", "conceptkit_meanshift.py", "tests/test_meanshift.py"}


def test_guide_plugin_tests_pass(plugin_dir, ck_tiny_model, ck_store, ck_registered_plugin, tmp_path):
    """The guide's own tests of its plugin pass: run from Python, stored, shown, and run by the CLI with --json."""
    spec = importlib.util.spec_from_file_location("guide_test_meanshift", plugin_dir / "tests" / "test_meanshift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_meanshift_runs_stores_and_shows(ck_tiny_model, ck_store, ck_registered_plugin)
    module.test_meanshift_from_the_command_line(ck_registered_plugin, tmp_path)


def test_guide_plugin_provenance_and_help(plugin_dir, ck_tiny_model, ck_store, ck_registered_plugin):
    """A stored record's provenance comes from the core (plugin, config, input fingerprints, model), and --help shows the descriptions."""
    from click.testing import CliRunner

    import conceptkit as ck
    from conceptkit.cli import cli

    plugin = importlib.import_module("conceptkit_meanshift")
    config = {"concept": "c", "positive": ["ab"], "negative": ["cd"], "token": "s"}
    with ck_registered_plugin(plugin, "meanshift"):
        result = ck.method("meanshift").run(ck_tiny_model("tiny-llama"), config, store=ck_store)
        helped = CliRunner().invoke(cli, ["run", "meanshift", "--help"])
    info = ck_store.get(result.record_ids[0])
    assert info.method.plugin == "meanshift" and info.model["name"] == "tiny-llama"
    assert {"positive", "negative", "probe"} <= set(info.method.inputs)  # config texts + add_input
    assert info.method.config["probe"] == "The weather today is"  # the validated config, defaults included
    assert helped.exit_code == 0 and "steering strength" in helped.output and "default: 4.0" in helped.output


def test_guide_pyproject_builds_with_entry_point(plugin_dir, tmp_path):
    """pip builds the guide's pyproject: distribution conceptkit-meanshift 0.1.0 with entry point meanshift."""
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(target), str(plugin_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (dist,) = target.glob("conceptkit_meanshift-0.1.0.dist-info")
    assert "meanshift = conceptkit_meanshift" in (dist / "entry_points.txt").read_text()
    assert (target / "conceptkit_meanshift.py").read_text() == (plugin_dir / "conceptkit_meanshift.py").read_text()
