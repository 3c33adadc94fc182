"""What the keepers' shared cores ask their driver to do: the keeper's own steps, one level above the protocol's.

Each keeper method is written once, in `grantkeeper.engine.keeper`, as a generator that yields these operations
and receives their results (or has their exceptions thrown in), like the refresh protocol's flow does one level
down. `Keeper` runs a generator with `run_steps` and executes each operation with a plain call; `AsyncKeeper` with
`arun_steps` and ``await``. So a method pair is two lines, and what the keeper does is written once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grantkeeper.engine.ports import Store
from grantkeeper.protocol.refresh import Flow

__all__ = ["Blocking", "Call", "Op", "Pause", "Refresh", "RunFlow", "Steps", "arun_steps", "run_steps"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One store transaction: the method of the `Store` (or `AsyncStore`, awaited) and its arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, *args: Any, **kwargs: Any) -> Call:
        return cls(method, args, kwargs)


@dataclass(frozen=True, slots=True)
class RunFlow:
    """Drive one refresh protocol flow to its end (`grantkeeper.engine.drivers`); the result is its `Refreshed`."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class Refresh:
    """Refresh grant `name` under its in-process lock; the result is the `Refreshed`, or None if a caller before
    this one already did the work."""

    name: str
    force: bool


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run `work` with a synchronous face of the store: code that may block, such as the event sinks (user code)
    or `diagnose` (it looks attempts up in the store as it goes). An async keeper runs it in a worker thread."""

    work: Callable[[Store], Any]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait `seconds`, or less if the keeper is closing (the background replay between tries)."""

    seconds: float


Op = Call | RunFlow | Refresh | Blocking | Pause
#: A keeper method's core: yields operations, receives their results, returns the method's result.
Steps = Generator[Op, Any, T]


def _next(steps: Steps[Any], reply: Any, error: Exception | None) -> Op:
    return steps.send(reply) if error is None else steps.throw(error)


async def arun_steps(steps: Steps[T], execute: Callable[[Op], Awaitable[Any]]) -> T:
    """Run `steps` to their end, awaiting each operation with `execute`; its exceptions go back into `steps`."""
    reply: Any = None
    error: Exception | None = None
    with contextlib.closing(steps):
        while True:
            try:
                op = _next(steps, reply, error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            try:
                reply, error = await execute(op), None
            except Exception as exc:  # into the steps: they decide what a failed operation means
                reply, error = None, exc


def run_steps(steps: Steps[T], execute: Callable[[Op], Any]) -> T:
    """`arun_steps` with a synchronous `execute`, without an event loop: nothing in it suspends, so its coroutine
    runs to the end on the first ``send`` (one loop for both faces instead of a twin)."""

    async def at_once(op: Op) -> Any:
        return execute(op)

    coroutine = arun_steps(steps, at_once)
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a synchronous keeper operation suspended")  # at_once awaits nothing that could wait
