"""Which store transaction each store step of the protocol names: one table, used by both drivers.

A step maps to a store method and its arguments; the sync driver calls the method, the async driver awaits the
`AsyncStore`'s. Like psycopg's generators, which yield waits that ``wait()`` executes, the protocol never holds the
store itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from grantkeeper.protocol.steps import (
    ClaimGrant,
    Commit,
    Finish,
    Load,
    Record,
    Release,
    SaveRecovery,
    StoreStep,
    WaitForChange,
)

__all__ = ["store_call"]

Call = tuple[str, tuple[Any, ...], dict[str, Any]]

#: The `Store` method each store step runs. A step's fields are that method's arguments under the same names: the
#: first is passed by position, the rest by keyword (tests/engine/test_dispatch.py binds each to the signature).
_METHOD: dict[type[StoreStep], str] = {
    Load: "get_grant_and_provider",
    ClaimGrant: "claim",
    Record: "record_attempt",
    Commit: "commit",
    Finish: "finish",
    Release: "release",
    SaveRecovery: "save_recovery",
    WaitForChange: "wait_for_change",
}


def _arguments(kind: type[StoreStep]) -> tuple[str, tuple[str, ...]]:
    first, *rest = (field.name for field in dataclasses.fields(kind))  # type: ignore[arg-type]
    return first, tuple(rest)


_CALLS = {kind: (method, *_arguments(kind)) for kind, method in _METHOD.items()}


def store_call(step: StoreStep) -> Call:
    """The store method `step` names, with its positional and keyword arguments."""
    method, first, rest = _CALLS[type(step)]
    return method, (getattr(step, first),), {name: getattr(step, name) for name in rest}
