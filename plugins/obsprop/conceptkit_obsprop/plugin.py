"""Entry-point module: registers the ``obsprop`` method (imported lazily: listing plugins loads no torch)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_obsprop.method import ObsProp

    register(ObsProp)
