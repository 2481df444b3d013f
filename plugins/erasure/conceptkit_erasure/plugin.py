"""Entry-point module: registers the ``erasure`` method.

Stored erasers and UCE edits are applied with the core's ``conceptkit edit apply RECORD``.
"""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_erasure.method import Erasure

    register(Erasure)
