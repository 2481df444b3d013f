"""Exceptions that conceptkit raises on purpose.

Every error names the offending value (a plugin, a field, a site, a file) so that the CLI can
print it as one line and a Python user knows what to change without reading a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


#: longest message an error carries: a huge value (a megabyte string in a config) is echoed shortened
MAX_MESSAGE_CHARS = 2000


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut in the middle to at most about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 4) :]
    return f"{head} ... [{len(text) - len(head) - len(tail)} characters omitted] ... {tail}"


class ConceptkitError(Exception):
    """Base class of every error conceptkit raises deliberately (messages are capped in length)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (shorten(args[0]),)
        super().__init__(*args)


class PluginError(ConceptkitError):
    """A plugin failed to import or to register, or clashed with another plugin."""


class UnknownNameError(ConceptkitError, KeyError):
    """A name (method, model, site, backend, record) that does not exist.

    Subclasses ``KeyError`` so ``except KeyError`` keeps working for dictionary-style lookups.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str] = ()) -> None:
        self.kind, self.name = kind, name
        self.known = sorted(known)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        if close:
            message += "; did you mean " + ", ".join(repr(c) for c in close) + "?"
        elif self.known and len(self.known) <= 12:
            message += "; known: " + ", ".join(self.known)
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class ConfigError(ConceptkitError):
    """A method configuration (file, field or value) is invalid."""


class CapabilityError(ConceptkitError):
    """A method requires a capability that the model's backend does not offer."""


class MissingDependencyError(ConceptkitError, ImportError):
    """An optional package is needed; the message carries the exact pip command."""

    def __init__(self, package: str, pip_command: str, why: str = "") -> None:
        self.package, self.pip_command = package, pip_command
        reason = f" ({why})" if why else ""
        super().__init__(f"the package {package!r} is required{reason}; install it with: {pip_command}")


class InputError(ConceptkitError, ValueError):
    """Bad input to a model operation: wrong width, positions out of range, empty lists..."""


class StoreError(ConceptkitError):
    """The concept-vector store refused an operation or found corruption."""
