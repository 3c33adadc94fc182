"""Which event loop ``grantkeeper serve`` and ``grantkeeper schedule`` run on: uvloop when it is installed (the
``serve`` extra installs it except on Windows), else asyncio's own; ``[serve] loop`` (or
``$GRANTKEEPER_SERVE_LOOP``) chooses.

uvloop runs the same coroutines with about half the loop's CPU per socket operation: with dozens of token
requests in flight, the loop's own work is a fifth of a grouped refresh's CPU on asyncio's loop
(benchmarks/results/schedule_profile_gcfast.md). Nothing grantkeeper does depends on which loop runs it; the
stdlib loop stays one setting away for a platform where uvloop misbehaves or to rule it out.

Both commands also run with the cyclic garbage collector tuned (`collector_tuned`): at the default threshold a
busy scheduler ran a young-generation collection every ~8 refreshes and a full one every ~850, ~100 us of CPU per
refresh, an eighth of it; objects alive after start (modules, the app) are frozen out of every collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from grantkeeper._exceptions import ConfigurationError

__all__ = ["GC_THRESHOLD", "LOOPS", "collector_tuned", "loop_factory", "loop_name", "run"]

#: The settings ``[serve] loop`` takes: "auto" is uvloop when it can be imported, else asyncio's loop.
LOOPS = ("auto", "asyncio", "uvloop")

#: Net new container objects between young-generation collections (CPython's default: 700). Each refresh
#: allocates and frees a few thousand in bursts; at 700 most collections find only objects about to be freed anyway.
#: Garbage in cycles waits at most this many allocations longer to be freed: kilobytes.
GC_THRESHOLD = 7000

T = TypeVar("T")


def check_loop(choice: str) -> None:
    """Refuse a loop setting that is not one of `LOOPS`, or ``uvloop`` where it is not installed."""
    if choice not in LOOPS:
        raise ConfigurationError(f"event loop {choice[:40]!r} is not one of {', '.join(LOOPS)}")
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigurationError(
            "loop = 'uvloop' but uvloop is not installed: pip install 'grantkeeper[serve]' (uvloop does not run on "
            "Windows), or set loop = 'auto' to use it only where it is installed"
        )


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner` builds its loop with for `choice` (None: asyncio's own loop).

    Raises:
        ConfigurationError: `choice` is not one of `LOOPS`, or is ``uvloop`` and uvloop is not installed.
    """
    check_loop(choice)
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None  # "auto" without uvloop; "uvloop" without it was refused above
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(choice: str = "auto") -> str:
    """The loop `choice` runs on here: "uvloop" or "asyncio"."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """For the block: the young generation collected every `GC_THRESHOLD` net allocations, and every object alive
    at its start frozen out of collections (`gc.freeze`); both undone after it."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """`asyncio.run` on the loop `loop` chooses (`loop_factory`), the collector tuned (`collector_tuned`)."""
    try:
        factory = loop_factory(loop)
    except ConfigurationError:
        main.close()  # never started: no "coroutine was never awaited" warning on top of the error
        raise
    with collector_tuned(), asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
