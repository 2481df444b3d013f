"""Entry-point module: registers the ``rocr`` method (torch loads only when it runs)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_rocr.method import ROCR

    register(ROCR)
