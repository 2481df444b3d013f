"""Progress that talks: stages and bars (rich) on stderr for every long run, silenced by ``--quiet``.

One switch decides for the whole process: :func:`configure` (the CLI sets it from ``--quiet``),
else the ``CONCEPTKIT_PROGRESS`` environment variable (``1``/``0``), else whether stderr is a
terminal. Library code reports through three calls and never prints directly:

* :func:`stage` — one line naming what starts now ("capturing activations at 3 sites");
* :func:`track` — wrap an iterable of work items (batches) in a bar with an estimate;
* :func:`bar` — a bar updated by hand (``update(n)``, ``close()``), e.g. tokens of a stream.

Nothing is shown for work of a single item, so short calls stay quiet.

Example:
    >>> from conceptkit import progress
    >>> progress.configure(False)
    >>> list(progress.track(range(3), total=3, description="demo"))
    [0, 1, 2]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_enabled: bool | None = None
_console: Any = None


def configure(enabled: bool | None) -> None:
    """Force progress on (``True``) or off (``False``); ``None`` goes back to the default."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether stages and bars are shown now."""
    if _enabled is not None:
        return _enabled
    env = os.environ.get("CONCEPTKIT_PROGRESS")
    if env is not None and env.strip() != "":
        return env.strip().lower() not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


def _stderr_console() -> Any:
    global _console
    if _console is None or _console.file is not sys.stderr:  # pytest swaps sys.stderr
        from rich.console import Console

        _console = Console(file=sys.stderr, highlight=False)
    return _console


def stage(message: str) -> None:
    """Announce a stage of a long run (one line on stderr, with the time of day)."""
    if enabled():
        _stderr_console().print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] [bold cyan]>[/bold cyan] {message}")


class _Bar:
    """A rich progress bar with elapsed time and an estimate of the time left."""

    def __init__(self, total: int | None, description: str, unit: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=_stderr_console(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def update(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set_description(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, description: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, description: str, unit: str = "", show: bool | None = None) -> Any:
    """A bar to update by hand; a silent stand-in when progress is off or ``total`` <= 1."""
    show = enabled() if show is None else show
    if not show or (total is not None and total <= 1):
        return _NoBar()
    return _Bar(total, description, unit)


def track(iterable: Iterable[T], total: int | None, description: str, unit: str = "batches", show: bool | None = None) -> Iterator[T]:
    """Yield from ``iterable`` with a bar (and an estimate) when progress is on."""
    with bar(total, description, unit, show) as b:
        for item in iterable:
            yield item
            b.update(1)
