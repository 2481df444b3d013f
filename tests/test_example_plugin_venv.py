"""A third-party plugin proven end to end: pip-installed into a fresh virtual environment.

The fresh venv gets conceptkit and the example plugin through ``pip install`` (so their entry
points are real installed metadata); the heavy shared dependencies (torch, transformers, ...)
are made visible through a ``.pth`` file pointing at the test run's site-packages, so the test
does not reinstall gigabytes.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "conceptkit-diffmeans"


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.venv
def test_example_plugin_installs_lists_and_runs(tmp_path):
    """After `pip install` of the example plugin, `conceptkit plugins` lists it and `run` works."""
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], dict(os.environ)).stdout.strip())
    shared = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).exists()]
    lines = list(dict.fromkeys(shared))
    # First-party plugins installed in editable mode are found through their own .pth files,
    # which Python reads only in site directories: carry them over (not the core's: the fresh
    # venv installs the core itself).
    for directory in shared:
        for pth in sorted(Path(directory).glob("__editable__.conceptkit_*.pth")):
            lines += pth.read_text().splitlines()
    (fresh_site / "zz_shared_deps.pth").write_text("\n".join(lines) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    env["CONCEPTKIT_STORE"] = str(tmp_path / "store")
    # This test is about installing and listing, not timing: on a loaded machine importing a
    # plugin from a fresh venv can pass the slow-import threshold (tested on its own elsewhere).
    env["CONCEPTKIT_SLOW_PLUGIN_IMPORT_S"] = "600"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    # The venv's bundled setuptools may be older than the build needs; use the shared one.
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], env=env, capture_output=True)

    _run(pip + [str(ROOT)], env)
    before = json.loads(_run([str(py), "-m", "conceptkit.cli", "plugins", "--json"], env).stdout)
    assert "conceptkit-diffmeans" not in {p["distribution"] for p in before["plugins"]}
    _run(pip + [str(EXAMPLE)], env)
    conceptkit = str(env_dir / "bin" / "conceptkit")
    listed = json.loads(_run([conceptkit, "plugins", "--json"], env).stdout)
    plugin = next(p for p in listed["plugins"] if p["distribution"] == "conceptkit-diffmeans")
    assert plugin["methods"] == ["diffmeans"] and plugin["version"] == "0.1.0"
    assert listed["failures"] == []

    out = _run(
        [conceptkit, "run", "diffmeans", "--model", "tiny-llama", "--set", "concept=greeting",
         "--set", 'positive=["hello there", "hi friend", "hey you"]', "--set", 'negative=["the table", "a chair", "one lamp"]'],
        env,
    )
    assert "greeting @ blocks.1.hook_resid_post" in out.stdout
    stored = json.loads(_run([conceptkit, "store", "ls", "--json"], env).stdout)
    assert [r["method"]["distribution"] for r in stored] == ["conceptkit-diffmeans"]

    # The plugin's own tests use conceptkit's pytest plugin (entry point pytest11).
    _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")], env, cwd=tmp_path)
