"""Dependency directions (issue 9, item 9): backends do not import the plugin manager for
provenance, the store reads records without loading plugins, and the CLI modules form no
import circle. Checked in fresh interpreters so that nothing imported earlier hides an import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core" / "conceptkit"


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout.strip()


def test_backend_modules_do_not_import_the_plugin_manager():
    """Importing the backend modules (and asking for a distribution's version) loads no plugin manager."""
    mods = "conceptkit.backends.hf, conceptkit.backends.transformer_lens, conceptkit.backends.diffusers"
    out = _fresh(f"import sys, {mods}; from conceptkit._dist import dist_version; dist_version('torch'); print('conceptkit.plugin_manager' in sys.modules)")
    assert out == "False"


def test_store_reads_a_record_without_loading_plugins(tmp_path):
    """get/find/tensors on a record made by a plugin import neither the plugin manager nor plugins."""
    code = f"""
import sys, warnings, torch
warnings.simplefilter("ignore")
from conceptkit.store import open_store, RecordDraft, MethodInfo
s = open_store({str(tmp_path / 's')!r})
rid = s.put(RecordDraft(tensors=torch.ones(3), concept="x", method=MethodInfo(name="tcav", plugin="tcav", distribution="conceptkit-tcav"))).id
for name in [m for m in sys.modules if m == "conceptkit.plugin_manager" or m.startswith("conceptkit_")]:
    del sys.modules[name]
s2 = open_store({str(tmp_path / 's')!r})
s2.get(rid); s2.find(); s2.tensors(rid); s2.verify()
print(sorted(m for m in sys.modules if m == "conceptkit.plugin_manager" or m.startswith("conceptkit_")))
"""
    assert _fresh(code) == "[]"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_cli_modules_form_no_import_circle():
    """cli imports cli_store; cli_store never imports cli (shared output lives in _cli_output)."""
    assert "conceptkit.cli_store" in _imports(CORE / "cli.py")
    assert "conceptkit.cli" not in _imports(CORE / "cli_store.py")
    assert _fresh("import sys, conceptkit.cli_store; print('conceptkit.cli' in sys.modules)") == "False"
