"""Provider calls per expiry under 8 processes x 8 threads (docs/design.md I2: one provider call per expiry).

A simulator issues 1-second access tokens; one grant; 8 "spawn" processes, each with one Keeper on the same
SQLite store and 8 threads calling ``access_token`` in a loop for a few seconds. Every generation the grant
advances is one expiry that needed renewing, so provider token requests / generations advanced is 1.00 when
no call was wasted or duplicated, and above 1.00 otherwise (a duplicate spend would also show up as
invalid_grant, or as reuse detection revoking the grant).

This is a count, not a timing, so it needs no interleaving; the baseline column is the minimum number of
calls (one per generation).
"""

from __future__ import annotations

import multiprocessing
import queue
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import Report, Row, sim_provider, standalone, stop_workers
from benchmarks._workers import hold_token
from grantkeeper import Keeper
from grantkeeper.testing.simulator import ProviderSimulator

NAME = "processes"
TITLE = "provider calls per expiry, 8 processes x 8 threads, 1 s access tokens"
GRANT = "bench"
PROCESSES = 8
THREADS = 8
ACCESS_TTL = 1.0


@dataclass(frozen=True)
class _Load:
    """What the workers did: where the grant and the provider stood at the start, and what they counted."""

    initial: int
    calls_before: int
    totals: Counter[str]
    tokens: set[str]
    elapsed: float


def run(quick: bool = False) -> Report:
    seconds = 3.0 if quick else 6.0
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    with (
        ProviderSimulator(access_ttl=ACCESS_TTL) as sim,
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-") as tmp,
    ):
        url = f"sqlite://{Path(tmp) / 'grants.db'}"
        with Keeper.open(url) as setup:
            setup.add_provider(sim_provider(sim))
            setup.import_grant(GRANT, provider="sim", refresh_token=sim.issue_grant())
        load = _hammer(url, sim, seconds)
        with Keeper.open(url) as check:
            final = check.store.get_grant(GRANT).generation
        _record(report, sim, load, final)
    report.seconds = time.perf_counter() - started
    return report


def _hammer(url: str, sim: ProviderSimulator, seconds: float) -> _Load:
    """PROCESSES spawned processes of THREADS threads each call ``access_token`` for `seconds`, all at once."""
    ctx = multiprocessing.get_context("spawn")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(target=hold_token, args=(url, GRANT, seconds, THREADS, ready, go, results), daemon=True)
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            message = ready.get(timeout=180)
            if message != "ready":
                raise RuntimeError(f"a worker process could not start: {message}")
        with Keeper.open(url) as check:
            initial = check.store.get_grant(GRANT).generation
        calls_before = sim.stats.refresh_calls
        go.set()
        t0 = time.perf_counter()
        totals: Counter[str] = Counter()
        tokens: set[str] = set()
        failures: list[str] = []
        for _ in procs:
            outcome = results.get(timeout=seconds + 180)
            totals.update(outcome["counts"])
            tokens.update(outcome["tokens"])
            if outcome["error"]:
                failures.append(outcome["error"])
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join(timeout=60)
    except queue.Empty:
        raise RuntimeError("worker processes did not report in time") from None
    finally:
        stop_workers(procs, go)
    if failures:
        raise RuntimeError(f"worker processes crashed: {failures}")
    exit_codes = [p.exitcode for p in procs]
    if any(code != 0 for code in exit_codes):
        raise RuntimeError(f"worker processes exited with {exit_codes}")
    return _Load(initial, calls_before, totals, tokens, elapsed)


def _record(report: Report, sim: ProviderSimulator, load: _Load, final: int) -> None:
    stats = sim.stats
    calls = stats.refresh_calls - load.calls_before
    advanced = final - load.initial
    invalid_grant = stats.errors.get("invalid_grant", 0)
    ratio = calls / advanced if advanced else float("inf")
    report.rows.append(
        Row(
            bench=NAME,
            measured=f"provider calls per expiry ({PROCESSES} proc x {THREADS} thr)",
            a_label="provider refresh calls",
            a=calls,
            b_label="generations advanced",
            b=advanced,
            unit="count",
            ratio=ratio,
            target="== 1.00",
            passed=advanced > 0 and calls == advanced,
        )
    )
    totals = load.totals
    worker_errors = {k: v for k, v in totals.items() if k != "calls"}
    report.notes += [
        f"provider refresh calls {calls}; generations advanced {advanced} ({load.initial} -> {final}); "
        f"invalid_grant {invalid_grant}; reuse detections {stats.reuse_detections}; simulator errors "
        f"{dict(stats.errors) or 'none'}",
        f"{totals['calls']:,} access_token calls served in {load.elapsed:.1f} s by {PROCESSES * THREADS} threads; "
        f"distinct access tokens served {len(load.tokens)}; worker errors {worker_errors or 'none'}",
    ]


if __name__ == "__main__":
    standalone(run)
