"""The figures table of the adversarial tests (issue 10).

Each adversarial input is run through :func:`expect_error` (it must raise a conceptkit error
whose message names the problem) or tallied with :func:`tally` (handled in another correct way:
skipped with a warning, repaired, refused). Running the tests with ``CONCEPTKIT_FIGURES=path``
appends one JSON line per input to ``path``; ``python -m tests.adversarial.figures`` runs the
folder that way and prints the table: area · inputs tried · clear error · crash or silent
misbehaviour · acknowledged records lost.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from conceptkit.errors import ConceptkitError

FIGURES_ENV = "CONCEPTKIT_FIGURES"


def tally(area: str, label: str, outcome: str = "clear", lost: int = 0) -> None:
    """Record one input's outcome: ``clear`` (a clear error or correct handling), ``crash``,
    ``silent`` or ``unclear``; ``lost`` counts acknowledged records lost."""
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"area": area, "label": label, "outcome": outcome, "lost": lost}) + "\n")


def expect_error(area: str, label: str, fn: Callable[[], Any], match: str, exc: type[BaseException] | tuple = ConceptkitError) -> BaseException:
    """``fn()`` must raise ``exc`` with a message matching ``match``; the outcome is tallied."""
    try:
        fn()
    except exc as err:
        ok = re.search(match, str(err)) is not None
        tally(area, label, "clear" if ok else "unclear")
        assert ok, f"{label}: message {str(err)[:300]!r} does not match {match!r}"
        return err
    except BaseException as err:  # noqa: BLE001 - a traceback is what we count
        tally(area, label, "crash")
        raise AssertionError(f"{label}: raised {type(err).__name__}: {str(err)[:300]} instead of a clear error") from err
    tally(area, label, "silent")
    raise AssertionError(f"{label}: accepted silently; expected an error matching {match!r}")
