"""One public surface: plugins and the example plugin import only `conceptkit` and `conceptkit.api`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import conceptkit as ck
from conceptkit import api

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "conceptkit-diffmeans"


def _plugin_folders() -> list[Path]:
    """Every shipped plugin's import package, and the example plugin's package and tests."""
    folders = sorted(p for p in (ROOT / "plugins").glob("*/conceptkit_*") if p.is_dir())
    return folders + [EXAMPLE / "conceptkit_diffmeans", EXAMPLE / "tests"]


def violations(path: Path, in_tests: bool) -> list[str]:
    """Imports in ``path`` that reach past the public surface, as 'file:line: statement'."""
    # the public namespaces: conceptkit, conceptkit.api and the modules exported as names
    # (conceptkit.edits, conceptkit.interventions, ...), whose non-underscore names are public
    namespaces = {f"conceptkit.{name}" for name, module in api.SURFACE.items() if module.endswith(":")}
    allowed_modules = {"conceptkit", "conceptkit.api"} | namespaces | ({"conceptkit.testing"} if in_tests else set())
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        bad: list[str] = []
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.startswith("conceptkit.") and a.name not in allowed_modules]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mod = node.module
            if mod == "conceptkit":
                bad = [f"conceptkit.{a.name}" for a in node.names if a.name not in ck.__all__]
            elif mod == "conceptkit.api":
                bad = [f"conceptkit.api.{a.name}" for a in node.names if a.name not in api.__all__]
            elif mod in namespaces:
                bad = [f"{mod}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif mod.startswith("conceptkit.") and mod not in allowed_modules:
                bad = [mod]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {b}" for b in bad]
    return found


@pytest.mark.parametrize("folder", _plugin_folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_surface(folder: Path):
    """A shipped plugin (and the example plugin) imports only conceptkit, conceptkit.api, the
    public namespaces (conceptkit.edits ...) and conceptkit.testing in tests, and only public names."""
    in_tests = folder.name == "tests"
    found = [v for f in sorted(folder.rglob("*.py")) for v in violations(f, in_tests)]
    assert not found, "imports past the public surface:\n" + "\n".join(found)


def test_every_public_name_resolves():
    """Every name in `conceptkit.__all__` and `conceptkit.api.__all__` can be fetched."""
    assert set(api.__all__) <= set(ck.__all__)
    missing = [name for name in ck.__all__ if not hasattr(ck, name)]
    assert not missing


def test_surface_has_what_plugins_need():
    """Errors, records and provenance, the method contract, data helpers, probes, objectives,
    interventions, concepts, edits and handles are all public."""
    needed = {
        "InputError", "UnknownNameError", "ConfigError", "CapabilityError", "StoreError", "ConceptkitError",
        "RecordDraft", "Record", "MethodInfo", "method_info", "input_fingerprint",
        "Method", "ArtifactMethod", "MethodConfig", "Result", "validate_config",
        "Batch", "reduce_tokens", "fingerprint", "concepts", "ConceptSet",
        "fit_probe", "holdout_accuracy", "objectives", "as_objective", "TokenLogit",
        "interventions", "Add", "Handle", "HandleGroup", "WeightEdit", "WeightEditSet", "edits",
        "Model", "wrap", "load_model", "hookimpl",
    }
    assert needed <= set(ck.__all__), sorted(needed - set(ck.__all__))


def test_violations_are_found(tmp_path: Path):
    """The checker flags internal modules and unexported names, and allows the surface."""
    f = ROOT / "tests" / "_surface_probe.py"
    f.write_text(
        "import conceptkit as ck\nfrom conceptkit.api import RecordDraft\nfrom conceptkit import interventions\n"
        "from conceptkit.store.record import MethodInfo\nfrom conceptkit import plugin_manager\n"
        "import conceptkit.data\nfrom conceptkit.testing import assert_no_hook_leak\n"
        "from conceptkit.edits import WeightEdit\nfrom conceptkit.edits import _LOCAL\n"
    )
    try:
        found = [v.split(": ", 1)[1] for v in violations(f, in_tests=False)]
        in_tests = [v.split(": ", 1)[1] for v in violations(f, in_tests=True)]
    finally:
        f.unlink()
    assert found == ["conceptkit.store.record", "conceptkit.plugin_manager", "conceptkit.data", "conceptkit.testing", "conceptkit.edits._LOCAL"]
    assert in_tests == [f for f in found if f != "conceptkit.testing"]
