"""Cached `access_token` latency vs a bare dict lookup plus a clock read.

docs/design.md step 1: a cached access token valid beyond the skew is returned without I/O or locks. The least
any cache can do for that is one dict lookup, one clock read and one comparison, in a function call; that
is the baseline (`baseline` / `async_baseline` below, written as plainly as possible). The ratio says what
grantkeeper's fast path costs on top of that minimum.

Timing: `time.perf_counter_ns` around a loop of `calls` calls to the same pre-bound callable, garbage
collector off during the loop (as `timeit` does) for both cases alike. The cost of the bare loop (``for _
in range(calls): pass``) is measured in the same interleaved rounds and subtracted from both, so the
figures are the cost of the call itself; the raw figures are printed too.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from benchmarks._common import Report, Row, Sample, interleave, sim_provider, standalone
from grantkeeper import AsyncKeeper, Keeper
from grantkeeper.testing.simulator import ProviderSimulator

NAME = "cached"
TITLE = "cached access_token vs dict lookup + clock read"
TARGET = 3.0
GRANT = "bench"

#: The baseline's cache: name -> (access token, serve-until time). Filled in `run`.
d: dict[str, tuple[str, float]] = {}


def baseline(name: str) -> str | None:
    e = d.get(name)
    return e[0] if e is not None and e[1] > time.time() else None


async def async_baseline(name: str) -> str | None:
    e = d.get(name)
    return e[0] if e is not None and e[1] > time.time() else None


def _sync_round(fn: Callable[[str], object], name: str, calls: int) -> float:
    rng = range(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = perf_counter_ns()
        for _ in rng:
            fn(name)
        t1 = perf_counter_ns()
    finally:
        if gc_was_enabled:
            gc.enable()
    return (t1 - t0) / calls


def _empty_round(calls: int) -> float:
    rng = range(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = perf_counter_ns()
        for _ in rng:
            pass
        t1 = perf_counter_ns()
    finally:
        if gc_was_enabled:
            gc.enable()
    return (t1 - t0) / calls


async def _async_loop(fn: Callable[[str], Awaitable[object]], name: str, calls: int) -> float:
    rng = range(calls)
    t0 = perf_counter_ns()
    for _ in rng:
        await fn(name)
    t1 = perf_counter_ns()
    return (t1 - t0) / calls


async def _async_empty_loop(calls: int) -> float:
    rng = range(calls)
    t0 = perf_counter_ns()
    for _ in rng:
        pass
    t1 = perf_counter_ns()
    return (t1 - t0) / calls


def _in_loop(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, float]]) -> Callable[[], float]:
    """One async round: the timing is taken inside the coroutine, so the event loop's start-up is not in it."""

    def round_() -> float:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return loop.run_until_complete(make())
        finally:
            if gc_was_enabled:
                gc.enable()

    return round_


def _rows(kind: str, results: dict[str, Sample], a_label: str, b_label: str) -> tuple[Row, list[str]]:
    keeper, base, loop = results["keeper"], results["baseline"], results["loop"]
    a = keeper.median - loop.median
    b = base.median - loop.median
    ratio = a / b
    row = Row(
        bench=NAME,
        measured=f"{kind} access_token, cached (per call)",
        a_label=a_label,
        a=a,
        b_label=b_label,
        b=b,
        unit="ns",
        ratio=ratio,
        target=f"<= {TARGET:.1f}",
        passed=ratio <= TARGET,
    )
    raw_ratio = keeper.median / base.median
    notes = [
        f"{kind}: grantkeeper {keeper.spread('ns')}",
        f"{kind}: baseline    {base.spread('ns')}",
        f"{kind}: bare loop   {loop.spread('ns')} per iteration, subtracted from both; "
        f"ratio with the loop left in: {raw_ratio:.2f}",
    ]
    return row, notes


def run(quick: bool = False) -> Report:
    calls, rounds, warmup = (20_000, 7, 1) if quick else (100_000, 41, 3)
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    with ProviderSimulator() as sim, tempfile.TemporaryDirectory(prefix="grantkeeper-bench-") as tmp:
        url = f"sqlite://{Path(tmp) / 'grants.db'}"
        keeper = Keeper.open(url)
        try:
            keeper.add_provider(sim_provider(sim))
            keeper.import_grant(GRANT, provider="sim", refresh_token=sim.issue_grant())
            token = keeper.access_token(GRANT)  # the one refresh; every timed call below is a cache hit
            d.clear()
            d[GRANT] = (token, time.time() + 3000.0)
            if baseline(GRANT) != token:
                raise RuntimeError("baseline cache is not set up")
            calls_before = sim.stats.refresh_calls

            sync = interleave(
                {
                    "keeper": lambda: _sync_round(keeper.access_token, GRANT, calls),
                    "baseline": lambda: _sync_round(baseline, GRANT, calls),
                    "loop": lambda: _empty_round(calls),
                },
                rounds=rounds,
                warmup=warmup,
            )
            row, notes = _rows("sync", sync, "Keeper.access_token", "baseline()")
            report.rows.append(row)
            report.notes.extend(notes)

            loop = asyncio.new_event_loop()
            try:
                akeeper = loop.run_until_complete(AsyncKeeper.open(url))
                try:
                    if loop.run_until_complete(akeeper.access_token(GRANT)) != token:  # loads the stored token
                        raise RuntimeError("AsyncKeeper did not serve the stored token")
                    if loop.run_until_complete(async_baseline(GRANT)) != token:
                        raise RuntimeError("async baseline cache is not set up")
                    asynchronous = interleave(
                        {
                            "keeper": _in_loop(loop, lambda: _async_loop(akeeper.access_token, GRANT, calls)),
                            "baseline": _in_loop(loop, lambda: _async_loop(async_baseline, GRANT, calls)),
                            "loop": _in_loop(loop, lambda: _async_empty_loop(calls)),
                        },
                        rounds=rounds,
                        warmup=warmup,
                    )
                finally:
                    loop.run_until_complete(akeeper.aclose())
            finally:
                loop.close()
            row, notes = _rows("async", asynchronous, "await AsyncKeeper.access_token", "await async_baseline()")
            report.rows.append(row)
            report.notes.extend(notes)

            spent = sim.stats.refresh_calls - calls_before
            report.notes.append(
                f"{calls:,} calls per round; provider calls during the timed rounds: {spent} (0 = every call was a "
                "cache hit)"
            )
            if spent:
                raise RuntimeError(f"{spent} provider calls during the cached benchmark: the token was not cached")
        finally:
            keeper.close()
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__":
    standalone(run)
