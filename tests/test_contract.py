"""The method contract: config validation, capability checks before compute, results."""

from __future__ import annotations

import pytest

import conceptkit as ck
from conceptkit.errors import CapabilityError, ConfigError, InputError


class Cfg(ck.MethodConfig):
    k: int = 1


class NeedsGrad(ck.Method):
    name = "needs-grad"
    Config = Cfg
    requires = frozenset({ck.Capability.GRADIENTS, ck.Capability.REMOTE})
    calls: list = []

    def compute(self, model, config, store):
        NeedsGrad.calls.append(config)
        return ck.Result()


class FakeModel:
    backend_name = "fake"
    capabilities = frozenset({ck.Capability.GRADIENTS})


def test_missing_capability_fails_before_compute():
    """A requirement the backend lacks is an error naming it, raised before any compute."""
    NeedsGrad.calls.clear()
    with pytest.raises(CapabilityError, match="requires remote, which backend 'fake' does not offer"):
        NeedsGrad().run(FakeModel(), {"k": 2})
    assert NeedsGrad.calls == []


def test_config_validation_names_field_and_value():
    """Wrong types and unknown fields name the method, field and value."""
    with pytest.raises(ConfigError, match=r"method 'needs-grad'.*field 'k'.*'x'"):
        NeedsGrad().run(FakeModel(), {"k": "x"})
    with pytest.raises(ConfigError, match="unknown field 'j'"):
        NeedsGrad().run(FakeModel(), {"j": 1})


def test_model_required_unless_declared_otherwise():
    """A method that needs a model says so when given none."""
    with pytest.raises(InputError, match="needs a model"):
        NeedsGrad().run(None, {})


def test_handles_undo_once_and_group_removes_all_even_if_one_raises():
    """Handles are idempotent; a group removes the rest even when one removal raises."""
    log = []

    def bad():
        log.append("bad")
        raise RuntimeError("boom")

    from conceptkit.handles import Handle, HandleGroup

    group = HandleGroup([Handle(lambda: log.append("a")), Handle(bad), Handle(lambda: log.append("c"))])
    with pytest.raises(RuntimeError):
        group.remove()
    assert log == ["c", "bad", "a"]
    group.remove()
    assert log == ["c", "bad", "a"]
