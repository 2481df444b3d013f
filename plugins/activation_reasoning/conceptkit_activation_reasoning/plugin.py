"""Entry-point module: registers the ``activation_reasoning`` method and its ``ar_steer`` intervention
(imports stay light until they are used)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_activation_reasoning.method import ActivationReasoning

    register(ActivationReasoning)


@ck.hookimpl
def register_components(register):  # type: ignore[no-untyped-def]
    from conceptkit_activation_reasoning.steering import ARSteer

    register("intervention", ARSteer)
