"""Each store step of the protocol becomes a call of the `Store` method it names, its fields the method's arguments."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from grantkeeper.engine.dispatch import store_call
from grantkeeper.engine.ports import Store
from grantkeeper.protocol import steps
from grantkeeper.protocol.steps import StoreStep

# From the module's names, not StoreStep.__subclasses__(): a slots dataclass leaves its pre-slots class behind.
STEP_KINDS = [
    kind
    for kind in (getattr(steps, name) for name in steps.__all__)
    if isinstance(kind, type) and issubclass(kind, StoreStep) and kind is not StoreStep
]


def _step_with_distinct_values(kind: type[StoreStep]) -> tuple[StoreStep, dict[str, object]]:
    values: dict[str, object] = {field.name: object() for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    return kind(**values), values


def test_every_store_step_is_dispatched() -> None:
    assert len(STEP_KINDS) == 8
    for kind in STEP_KINDS:
        store_call(_step_with_distinct_values(kind)[0])


@pytest.mark.parametrize("kind", STEP_KINDS, ids=lambda kind: kind.__name__)
def test_each_field_reaches_the_store_parameter_of_its_name(kind: type[StoreStep]) -> None:
    step, values = _step_with_distinct_values(kind)
    method, args, kwargs = store_call(step)
    bound = inspect.signature(getattr(Store, method)).bind("self", *args, **kwargs)
    passed = {name: value for name, value in bound.arguments.items() if name != "self"}
    assert passed.keys() == values.keys()
    for name, value in values.items():
        assert passed[name] is value, name
