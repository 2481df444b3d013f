"""Self-undoing handles: the unit of ownership for hooks, interventions and weight edits.

Whatever adds something to a model returns a :class:`Handle`; removing the handle undoes exactly
that addition and nothing else. Handles are context managers and removal is idempotent, so a
``finally`` can always call it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class Handle:
    """Undo one change to a model; safe to call more than once."""

    def __init__(self, undo: Callable[[], None], description: str = "") -> None:
        self._undo: Callable[[], None] | None = undo
        self.description = description

    @property
    def active(self) -> bool:
        return self._undo is not None

    def remove(self) -> None:
        """Undo the change (no-op if already undone)."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def __enter__(self) -> "Handle":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"Handle({self.description!r}, {state})"


class HandleGroup(Handle):
    """Several handles removed together, in reverse order, even if one removal raises."""

    def __init__(self, handles: list[Handle] | None = None, description: str = "") -> None:
        self.handles: list[Handle] = list(handles or [])
        super().__init__(self._remove_all, description)

    def add(self, handle: Handle) -> Handle:
        self.handles.append(handle)
        return handle

    def _remove_all(self) -> None:
        errors: list[BaseException] = []
        while self.handles:
            try:
                self.handles.pop().remove()
            except BaseException as exc:  # noqa: BLE001 - finish removing the rest first
                errors.append(exc)
        if errors:
            raise errors[0]
