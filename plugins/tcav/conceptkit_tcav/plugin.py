"""Entry-point module: registers the TCAV method (imports stay light until the method runs)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_tcav.method import TCAV

    register(TCAV)
