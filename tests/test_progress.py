"""Long runs talk: stages and progress bars on a terminal, silence with --quiet (issue 11, item 1)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conceptkit import progress

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


def _run_in_pty(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return everything it printed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env={**os.environ, **(env or {})}, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=timeout)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def _config(tmp_path: Path) -> Path:
    letters = "abcdefghij"
    sentences = [f"{letters[i % 10]}{letters[(i * 3) % 10]}{letters[(i * 7) % 10]} x{i}" for i in range(60)]
    path = tmp_path / "biaslens.yaml"
    path.write_text(textwrap.dedent(f"""
        targets: [{{name: t, examples: {sentences[:12]}}}]
        references: [{{name: a, examples: {sentences[12:24]}}}, {{name: b, examples: {sentences[24:36]}}}]
        negative_pool: {sentences[36:]}
        n_pos: 12
        n_neg: 24
        batch_size: 4
        min_probe_accuracy: 0.0
    """))
    return path


def test_a_cli_run_on_a_terminal_shows_stages_and_a_bar_with_an_estimate(tmp_path: Path) -> None:
    """conceptkit run on a terminal prints its stages and a capture bar with an eta."""
    out = _run_in_pty([sys.executable, "-m", "conceptkit", "run", "biaslens", "--model", "tiny-llama", "--no-store", "--config", str(_config(tmp_path))])
    assert "loading model tiny-llama" in out
    assert "running biaslens" in out
    assert "capture (" in out and "eta" in out
    assert "BiasLens:" in out


def test_quiet_silences_stages_and_bars(tmp_path: Path) -> None:
    """--quiet prints the result and nothing else of progress."""
    out = _run_in_pty([sys.executable, "-m", "conceptkit", "run", "biaslens", "--quiet", "--model", "tiny-llama", "--no-store", "--config", str(_config(tmp_path))])
    assert "BiasLens:" in out
    assert "running biaslens" not in out and "eta" not in out


def test_progress_is_off_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a terminal (CI logs, pipes) nothing is drawn unless asked for."""
    monkeypatch.delenv("CONCEPTKIT_PROGRESS", raising=False)
    progress.configure(None)
    assert progress.enabled() is False
    progress.stage("not shown")
    assert list(progress.track(range(5), total=5, description="x")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CONCEPTKIT_PROGRESS", "1")
    assert progress.enabled() is True


def test_a_bad_plot_path_fails_before_any_compute(tmp_path: Path) -> None:
    """--plot into a missing folder is refused before the model loads."""
    from click.testing import CliRunner

    from conceptkit.cli import cli

    result = CliRunner().invoke(cli, ["run", "biaslens", "--model", "no-such-model", "--no-store", "--config", str(_config(tmp_path)), "--plot", str(tmp_path / "missing" / "x.png")])
    assert result.exit_code != 0
    assert "does not exist" in result.output and "no-such-model" not in result.output
