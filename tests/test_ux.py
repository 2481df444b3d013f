"""Command-line behaviour a new user meets first: --set values, help defaults, typos, entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conceptkit.cli import main
from conceptkit.config_io import apply_overrides


def test_set_keeps_the_whitespace_of_a_token() -> None:
    """--set key=" good" keeps the leading space (YAML would strip it and change the token)."""
    assert apply_overrides({}, ["target= good"]) == {"target": " good"}
    assert apply_overrides({}, ['target=" good"']) == {"target": " good"}
    assert apply_overrides({}, ["n=3", "flag=true", "xs=[1, 2]", "name=good"]) == {"n": 3, "flag": True, "xs": [1, 2], "name": "good"}


def test_set_with_an_empty_value_gives_an_empty_string() -> None:
    """--set key= is the empty string, not null."""
    assert apply_overrides({}, ["note="]) == {"note": ""}


def test_help_shows_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """run --help shows defaults made by factories (not 'null') and says which come from the model."""
    try:
        main(["run", "tcav", "--help"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert '"kind": "logit_diff"' in out
    assert "derived from the model" in out


def test_a_mistyped_config_field_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown config field is named with the closest real field."""
    with pytest.raises(SystemExit):
        main(["run", "tcav", "--set", "concepts=[x]", "--set", "targets=[a]", "--set", "n_randm=3", "--no-store"])
    err = capsys.readouterr().err
    assert "unknown field 'n_randm'" in err and "did you mean 'n_random'" in err


def test_a_mistyped_backend_is_called_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    """--backend nnsigth says 'unknown backend' with a suggestion, before any model loads."""
    with pytest.raises(SystemExit):
        main(["run", "tcav", "--set", "concepts=[x]", "--set", "targets=[a]", "--no-store", "--backend", "nnsigth"])
    err = capsys.readouterr().err
    assert "unknown backend 'nnsigth'" in err and "did you mean 'nnsight'" in err


def test_python_dash_m_conceptkit_runs_the_cli() -> None:
    """python -m conceptkit is the conceptkit command."""
    out = subprocess.run([sys.executable, "-m", "conceptkit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "concept vectors" in out.stdout


def test_pytest_fixtures_are_documented() -> None:
    """Every fixture of the conceptkit pytest plugin has a docstring."""
    from conceptkit import testing

    for name in ("ck_store", "ck_tiny_model", "ck_registered_plugin", "ck_hook_leak_check"):
        fixture = getattr(testing, name)
        fn = getattr(fixture, "__wrapped__", None) or getattr(fixture, "_fixture_function", None) or fixture
        doc = getattr(fn, "__doc__", None) or ""
        assert len(doc.strip()) > 20, name
