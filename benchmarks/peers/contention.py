"""Contention: 8 processes x 8 threads share 200 grants whose access tokens live 1 second, for 30 seconds.

Per library, a fresh `ProviderSimulator` (rotation always, reuse grace 0, reuse detection on: a superseded
refresh token presented again revokes the whole grant family) and a fresh store holding the 200 grants. The
worker processes ("spawn", `benchmarks.peers._workers.contend`) each open the library once and run 8 threads
that call ``client.token(random grant)`` with a 1 ms pause between calls; a grant the library reports dead is
dropped by that process. The clock starts when every process is ready. The parent samples the simulator's
counters every `SAMPLE` seconds for the plot.

* provider refresh calls per expiry = token requests / refresh tokens rotated (each rotation is one expiry
  renewed; a call that rotates nothing was wasted). Ideal 1.00.
* invalid_grant: token requests the simulator answered ``invalid_grant`` (a refresh token spent twice, or a
  revoked family's token).
* grants lost: grants whose stored refresh token is not the live one at the simulator after the run (the
  family was revoked, or the store holds a superseded token): they need the user's consent again.
"""

from __future__ import annotations

import multiprocessing
import queue
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import stop_workers
from benchmarks.peers import library
from benchmarks.peers._workers import contend
from benchmarks.peers.base import SimInfo
from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["Contention", "Size", "measure"]

SAMPLE = 0.25  # seconds between samples of the simulator's counters
THINK = 0.001  # seconds each thread pauses between calls


@dataclass(frozen=True)
class Size:
    processes: int
    threads: int
    grants: int
    seconds: float
    access_ttl: float = 1.0

    def describe(self) -> str:
        return (
            f"{self.processes} processes x {self.threads} threads, {self.grants} grants, {self.access_ttl:g} s "
            f"access tokens, {self.seconds:g} s"
        )


FULL = Size(processes=8, threads=8, grants=200, seconds=30.0)
QUICK = Size(processes=2, threads=2, grants=10, seconds=2.0)


@dataclass
class Contention:
    library: str
    refresh_calls: int
    rotations: int
    invalid_grant: int
    reuse_detections: int
    grants_lost: int
    grants: int
    calls_served: int
    errors: dict[str, int]  # raised to callers, by the library's code
    seconds: float
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (t, refresh calls, invalid_grant)

    @property
    def calls_per_expiry(self) -> float:
        return self.refresh_calls / self.rotations if self.rotations else float("inf")


def measure(lib: str, size: Size) -> Contention:
    adapter = library(lib)
    with (
        ProviderSimulator(access_ttl=size.access_ttl, rotation="always", reuse_grace=0, reuse_detection=True) as sim,
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-peers-") as tmp,
    ):
        location = adapter.create(Path(tmp), sim)
        names = [f"grant-{i:03d}" for i in range(size.grants)]
        for name in names:
            adapter.add_grant(location, name, sim.issue_grant())
        ctx = multiprocessing.get_context("spawn")
        ready: Any = ctx.Queue()
        results: Any = ctx.Queue()
        go = ctx.Event()
        args = (lib, location, SimInfo.of(sim), names, size.seconds, size.threads, THINK, ready, go, results)
        procs = [ctx.Process(target=contend, args=args, daemon=True) for _ in range(size.processes)]
        for p in procs:
            p.start()
        try:
            _await_ready(lib, ready, procs)
            outcomes, series, elapsed = _run(sim, go, results, len(procs), size.seconds)
            for p in procs:
                p.join(timeout=60)
        except queue.Empty:
            raise RuntimeError(f"contention ({lib}): worker processes did not report in time") from None
        finally:
            stop_workers(procs, go)
        crashed = [o["error"] for o in outcomes if o["error"]]
        if crashed or any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"contention ({lib}): worker processes failed: {crashed or [p.exitcode for p in procs]}")
        totals: Counter[str] = Counter()
        for outcome in outcomes:
            totals.update(outcome["counts"])
        stats = sim.stats
        lost = sum(1 for name in names if not _alive(sim, adapter.stored_refresh_token(location, name)))
    return Contention(
        library=lib,
        refresh_calls=stats.refresh_calls,
        rotations=stats.rotations,
        invalid_grant=stats.errors.get("invalid_grant", 0),
        reuse_detections=stats.reuse_detections,
        grants_lost=lost,
        grants=size.grants,
        calls_served=totals["calls"],
        errors={k.removeprefix("error:"): v for k, v in totals.items() if k.startswith("error:")},
        seconds=elapsed,
        series=series,
    )


def _run(sim: ProviderSimulator, go: Any, results: Any, workers: int, seconds: float) -> tuple[
    list[dict[str, Any]], list[tuple[float, int, int]], float
]:  # fmt: skip
    """Start the workers and sample the simulator until every worker has reported."""
    outcomes: list[dict[str, Any]] = []
    series = [(0.0, 0, 0)]
    go.set()
    t0 = time.perf_counter()
    limit = t0 + seconds + 180
    while len(outcomes) < workers:
        try:
            outcomes.append(results.get(timeout=SAMPLE))
        except queue.Empty:
            if time.perf_counter() > limit:
                raise
        now = time.perf_counter() - t0
        if now - series[-1][0] >= SAMPLE:
            stats = sim.stats
            series.append((now, stats.refresh_calls, stats.errors.get("invalid_grant", 0)))
    return outcomes, series, time.perf_counter() - t0


def _await_ready(lib: str, ready: Any, procs: list[Any]) -> None:
    """Every worker has opened the library; fails at once if one died instead."""
    waiting = len(procs)
    limit = time.monotonic() + 180
    while waiting:
        try:
            message = ready.get(timeout=0.5)
        except queue.Empty:
            if any(p.exitcode is not None for p in procs) or time.monotonic() > limit:
                raise RuntimeError(f"contention ({lib}): a worker died or hung while starting") from None
            continue
        if message != "ready":
            raise RuntimeError(f"contention ({lib}): a worker could not start: {message}")
        waiting -= 1


def _alive(sim: ProviderSimulator, refresh_token: str | None) -> bool:
    return refresh_token is not None and sim.is_active(refresh_token)
