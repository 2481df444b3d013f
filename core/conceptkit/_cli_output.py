"""Terminal output shared by the CLI modules (a leaf: the CLI modules import it, never each other)."""

from __future__ import annotations

from typing import Any


def console() -> Any:
    from rich.console import Console

    return Console()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table; ``None`` cells print empty."""
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*[str(c) if c is not None else "" for c in row])
    console().print(out)
