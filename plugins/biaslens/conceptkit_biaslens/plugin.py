"""Entry-point module: registers the BiasLens method (imports stay light until it runs)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_biaslens.method import BiasLens

    register(BiasLens)
