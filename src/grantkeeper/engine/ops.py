"""What the keepers' shared cores ask their driver to do: the keeper's own steps, one level above the protocol's.

Each keeper method is written once, in `grantkeeper.engine.keeper`, as a generator that yields these operations
and receives their results (or has their exceptions thrown in), like the refresh protocol's flow does one level
down. `Keeper` runs a generator with `run_steps` and executes each operation with a plain call; `AsyncKeeper` with
`arun_steps` and ``await``. So a method pair is two lines, and what the keeper does is written once.
"""

from __future__ import annotations

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
    #: A forced refresh is satisfied by any generation after this one (-1: after the one this process last saw).
    past: int = -1


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


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(steps: Steps[Any], reply: Any, error: Exception | None) -> Op | _Done:
    """The next operation of `steps`, given the last one's reply or error; `_Done` with their result at the end."""
    try:
        return steps.send(reply) if error is None else steps.throw(error)
    except StopIteration as stop:
        return _Done(stop.value)


def run_steps(steps: Steps[T], execute: Callable[[Op], Any]) -> T:
    """Run `steps` to their end, executing each operation with `execute`; its exceptions go back into `steps`."""
    reply: Any = None
    error: Exception | None = None
    try:
        while not isinstance(op := _advance(steps, reply, error), _Done):
            try:
                reply, error = execute(op), None
            except Exception as exc:  # into the steps: they decide what a failed operation means
                reply, error = None, exc
        result: T = op.value
        return result
    finally:
        steps.close()


async def arun_steps(steps: Steps[T], execute: Callable[[Op], Awaitable[Any]]) -> T:
    """`run_steps`, awaiting each operation."""
    reply: Any = None
    error: Exception | None = None
    try:
        while not isinstance(op := _advance(steps, reply, error), _Done):
            try:
                reply, error = await execute(op), None
            except Exception as exc:  # see run_steps
                reply, error = None, exc
        result: T = op.value
        return result
    finally:
        steps.close()
