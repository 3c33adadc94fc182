"""The refresh scheduler as a fleet runs it (issue 15, "What to measure", the last two bullets): what keeping a
million grants fresh costs one host, the most grants one instance keeps fresh with 60 s tokens, and 2 instances
vs 1 on one PostgreSQL store.

Every scheduler here is the real one (`grantkeeper.serve.scheduling.running_scheduler`, as ``grantkeeper
schedule`` builds it: `Scheduler` with group commit and the aiohttp sender) in a "spawn" process of its own; the
provider simulator runs in another (`SimulatorProcess`), so the figures are the scheduler process's own CPU
(``getrusage`` in that process, over the measured window) and the simulator's separately (``/proc``). One
provider stands for the fleet's providers, so ``per_provider`` is raised to ``concurrency`` (64): with the default
16 the one simulator would be the bottleneck of every figure. A thin observer around the scheduler's
``_refresh`` records, for each refresh it starts, how far after its planned time and after the end of its window
(the access token stops being served) it started; the scheduler's own stats (lag histogram, missed windows,
outcomes, batch sizes) are read as they are.

1. **1,000,000 grants, 1-hour access tokens, SQLite** (``--grants N``; 20,000 with ``--quick``): steady state,
   every grant hot, each one's planned refresh time spread evenly over the hour. The grants due inside the window
   of `WINDOW` seconds (N x W / 3600) hold refresh tokens the simulator issued; the others are bulk rows with
   random sealed tokens (bench_scale's sealing) whose planned times lie after the window: they are never sent,
   only read past by the due query. Reported: refreshes done vs planned, the scheduler's CPU share, lag p50/p99,
   missed windows, the simulator's errors (0 ``invalid_grant``).
2. **The largest N kept fresh with 60 s tokens, SQLite**: for N in `STEPS` (stopping at the first that fails),
   N hot grants with planned times spread over one refresh interval, run for `STEP_WINDOW` seconds; kept fresh
   means < 1 % of refreshes started after the token stopped being served and none missed its window.
3. **2 instances vs 1 on PostgreSQL** (`PostgresServer`): in interleaved rounds, `PG_GRANTS` grants fall due at
   once and 1 or 2 scheduler processes drain them; refreshes/s = grants / (last commit - start). Checked: every
   grant refreshed exactly once (generation 1 -> 2) and the simulator saw no reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import Report, Row, cpu_seconds, print_report, sim_provider, summarize
from benchmarks.bench_pgrefresh import _quiet
from benchmarks.bench_scale import (
    GRANT_COLUMNS,
    KEY,
    PROVIDER,
    RECOVERY_ENV,
    _environ,
    _postgres_unavailable,
    sealed_tokens,
)
from benchmarks.bench_schedule import SimulatorProcess, simulator_process
from grantkeeper.engine.scheduler import LAG_BUCKETS
from grantkeeper.keys import KEY_ENV, Crypto, parse_key
from grantkeeper.model import Grant, GrantState, Provider
from grantkeeper.protocol.planning import next_action
from grantkeeper.stores import open_store

NAME = "fleet"
TITLE = "the scheduler at fleet scale: 1,000,000 grants on one host, the most kept fresh with 60 s tokens, 2 vs 1"
DEFAULT_GRANTS = 1_000_000
QUICK_GRANTS = 20_000
HOUR = 3600.0
WINDOW, QUICK_WINDOW = 180.0, 8.0  # seconds of the 1-hour steady state measured
TAIL = 4.0  # the scheduler runs this long after the window: a grant planned at its end is taken at the next tick
HEADROOM = 900.0  # bulk grants are planned at least this long after the load starts (never inside the window)
STEPS, QUICK_STEPS = (2_000, 5_000, 10_000, 20_000, 40_000), (500, 1_000)
STEP_WINDOW, QUICK_STEP_WINDOW = 25.0, 6.0
SHORT_TTL = 60.0
LATE_LIMIT = 0.01  # kept fresh: fewer than 1 % of refreshes start after the token stopped being served
PG_GRANTS, QUICK_PG_GRANTS = 3_000, 200
PG_ROUNDS, QUICK_PG_ROUNDS = 3, 1
CONCURRENCY = 64
CHUNK = 25_000
UNIT = "refreshes/s"
COLUMNS = (*GRANT_COLUMNS, "hot", "next_due_at")
SQLITE_INSERT = f"INSERT INTO grants ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
PG_INSERT = SQLITE_INSERT.replace("?", "%s")
#: What the planner reads of the simulator's provider (sim_provider: the library's defaults, no lifetimes).
PLAN_PROVIDER = Provider(name=PROVIDER, token_url="http://127.0.0.1/token", client_id="sim-client")


# --- rows whose planned refresh times are known -----------------------------------------------------------------


def plan_offset(name: str, ttl: float) -> float:
    """How long before its access token's expiry the scheduler plans to refresh hot grant `name` (generation 1)
    holding a token issued for `ttl` seconds: the planner's own answer (lead and the grant's jitter), which does
    not depend on when the token was issued."""
    expires = 1e9
    grant = Grant(name, PROVIDER, None, "fp", None, "fp", expires, (), 1, GrantState.ACTIVE,
                  updated_at=expires - ttl, refreshed_at=expires - ttl, created_at=expires - ttl)  # fmt: skip
    plan = next_action(grant, PLAN_PROVIDER, hot=True, skew=PLAN_PROVIDER.skew)
    assert plan is not None
    return expires - plan.at


@dataclass(frozen=True)
class RowSpec:
    """Grants ``<prefix><i>`` for i in [start, stop) of `total`, hot, with 1 generation of tokens issued for `ttl`
    seconds; grant i is planned at ``lo + (hi - lo) * (i + 0.5) / total`` (evenly spread). `tokens` are the
    simulator's refresh tokens for [start, stop); None: random ones that are never sent."""

    prefix: str
    start: int
    stop: int
    total: int
    lo: float
    hi: float
    ttl: float
    tokens: tuple[str, ...] | None = None


def make_rows(key_text: str, spec: RowSpec) -> list[tuple[Any, ...]]:
    """The rows for `COLUMNS`, sealed as `SQLStore._seal` seals them (runs in "spawn" pool workers too)."""
    crypto = Crypto(parse_key(key_text, origin="the benchmark key"))
    rows = []
    for i in range(spec.start, spec.stop):
        name = f"{spec.prefix}{i:07d}"
        at = spec.lo + (spec.hi - spec.lo) * (i + 0.5) / spec.total
        expires = at + plan_offset(name, spec.ttl)
        issued = expires - spec.ttl
        refresh = spec.tokens[i - spec.start] if spec.tokens is not None else secrets.token_urlsafe(32)
        access = secrets.token_urlsafe(32)
        rows.append(
            (
                name, PROVIDER, *sealed_tokens(crypto, name, refresh, access),
                expires, 1, "read write", 1, "active", issued, issued - 86400.0, issued, True, at,
            )
        )  # fmt: skip
    return rows


def _pool_rows(specs: list[RowSpec]) -> Iterator[list[tuple[Any, ...]]]:
    """`make_rows` of each spec in order, sealed by "spawn" workers (a bounded window ahead)."""
    workers = min(os.cpu_count() or 1, 4)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        remaining = iter(specs)
        pending = deque(pool.apply_async(make_rows, (KEY, s)) for s in itertools.islice(remaining, 2 * workers))
        while pending:
            rows = pending.popleft().get()
            if (spec := next(remaining, None)) is not None:
                pending.append(pool.apply_async(make_rows, (KEY, spec)))
            yield rows


def _insert(url: str, rows: list[tuple[Any, ...]]) -> None:
    if url.startswith("sqlite://"):
        db = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            db.execute("BEGIN IMMEDIATE")
            db.executemany(SQLITE_INSERT, rows)
            db.execute("COMMIT")
        finally:
            db.close()
    else:
        import psycopg

        with psycopg.connect(url) as pg, pg.cursor() as cur:
            cur.executemany(PG_INSERT, rows)


def _load_sim_grants(url: str, sim: SimulatorProcess, prefix: str, n: int, lo: float, hi: float, ttl: float) -> None:
    """`n` hot grants holding the simulator's refresh tokens, planned evenly over [lo, hi]."""
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        tokens = tuple(sim.issue(stop - start))
        _insert(url, make_rows(KEY, RowSpec(prefix, start, stop, n, lo, hi, ttl, tokens)))


def _analyze(url: str) -> None:
    """SQLite's ``ANALYZE`` (statistics for its query planner), which the store itself never runs."""
    db = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
    try:
        db.execute("ANALYZE")
    finally:
        db.close()


def _setup_store(url: str, sim: SimulatorProcess) -> None:
    store = open_store(url, migrate=True)
    try:
        store.put_provider(sim_provider(sim, PROVIDER), now=time.time())
    finally:
        store.close()


# --- processes: the simulator and the schedulers ----------------------------------------------------------------


@dataclass
class Run:
    """What one scheduler process reports about its measured window (from go to the stop)."""

    wall: float = 0.0
    cpu: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    lag_buckets: list[int] = field(default_factory=list)
    missed: int = 0
    batches: dict[int, int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)  # started - planned time, per refresh started
    past_end: list[float] = field(default_factory=list)  # started - end of window, per refresh started

    @property
    def refreshed(self) -> int:
        return self.outcomes.get("refreshed", 0)

    @property
    def started(self) -> int:
        return len(self.lags)

    @property
    def late(self) -> int:
        return sum(1 for x in self.past_end if x > 0)


def _scheduler_child(conn: multiprocessing.connection.Connection, url: str) -> None:
    """One scheduler instance: says "ready" once imported, opens the store at ("go", stop_at) and runs until
    `stop_at` (wall clock) or until "stop" arrives, stops gracefully and sends its `Run`."""
    import logging

    from grantkeeper.engine.scheduler import SchedulerOptions
    from grantkeeper.serve.scheduling import running_scheduler

    logging.getLogger("grantkeeper").setLevel(logging.ERROR)  # a missed window is counted, not logged here
    conn.send("ready")
    command, stop_at = conn.recv()
    if command != "go":
        return
    store = open_store(url)  # at go, not before: a connection opened before ANALYZE keeps the plans it had
    run = Run()
    options = SchedulerOptions(concurrency=CONCURRENCY, per_provider=CONCURRENCY)

    async def main() -> None:
        async with running_scheduler(store, options, worker=f"bench-{os.getpid()}") as scheduler:
            refresh = scheduler._refresh

            async def observed(entry: Any, plan: Any, provider: Any, gate: Any) -> float:
                now = time.time()
                run.lags.append(now - plan.at)
                run.past_end.append(now - plan.deadline)
                return await refresh(entry, plan, provider, gate)

            scheduler._refresh = observed  # type: ignore[method-assign]
            wall0, cpu0 = time.perf_counter(), _own_cpu()
            if stop_at is not None:
                await asyncio.sleep(max(0.0, stop_at - time.time()))
            else:
                await asyncio.to_thread(conn.recv)
            run.wall, run.cpu = time.perf_counter() - wall0, _own_cpu() - cpu0
        stats = scheduler.stats
        run.outcomes, run.lag_buckets = dict(stats.outcomes), list(stats.lag_buckets)
        run.missed, run.batches = stats.missed, dict(stats.batches)

    try:
        asyncio.run(main())
    finally:
        store.close()
    conn.send(run)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Instances:
    """`n` scheduler processes on one store, started at once; `ready` waits for their imports."""

    def __init__(self, url: str, n: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            parent, child = context.Pipe()
            proc = context.Process(target=_scheduler_child, args=(child, url), name=f"bench-scheduler-{i}",
                                   daemon=True)  # fmt: skip
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def ready(self) -> None:
        for conn in self.conns:
            if not conn.poll(120) or conn.recv() != "ready":
                raise RuntimeError("a scheduler process did not start within 120 s")

    def go(self, stop_at: float | None = None) -> None:
        for conn in self.conns:
            conn.send(("go", stop_at))

    def finish(self, *, stop: bool) -> list[Run]:
        if stop:
            for conn in self.conns:
                conn.send(("stop", None))
        runs = []
        for conn in self.conns:
            if not conn.poll(300):
                raise RuntimeError("a scheduler process did not report within 300 s of its stop")
            runs.append(conn.recv())
        return runs

    def close(self) -> None:
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)


# --- figures ------------------------------------------------------------------------------------------------------


def bucket_quantile(buckets: list[int], q: float) -> str:
    """The scheduler's lag histogram's quantile `q` as "<= bound" (it keeps counts per bucket, not samples)."""
    total = sum(buckets)
    if not total:
        return "n/a"
    seen = 0
    for count, bound in zip(buckets, LAG_BUCKETS, strict=True):
        seen += count
        if seen >= q * total:
            return f"<= {bound:g} s" if math.isfinite(bound) else f"> {LAG_BUCKETS[-2]:g} s"
    raise AssertionError


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def _batches(runs: list[Run]) -> str:
    sizes = [size for run in runs for size, count in run.batches.items() for _ in range(count)]
    if not sizes:
        return "no batches"
    return f"{len(sizes)} store batches, mean {statistics.fmean(sizes):.1f} calls, max {max(sizes)}"


def _check_simulator(stats: dict[str, Any], label: str) -> None:
    if stats["errors"] or stats["reuse_detections"]:
        raise RuntimeError(f"{label}: the simulator saw errors {stats['errors']} / reuse {stats['reuse_detections']}")


def _generations(url: str, prefix: str) -> dict[int, int]:
    """How many grants named `prefix`... are at each generation."""
    if url.startswith("sqlite://"):
        db = sqlite3.connect(url.removeprefix("sqlite://"))
        try:
            rows = db.execute("SELECT generation, count(*) FROM grants WHERE name LIKE ? GROUP BY generation",
                              (prefix + "%",)).fetchall()  # fmt: skip
        finally:
            db.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            rows = pg.execute("SELECT generation, count(*) FROM grants WHERE name LIKE %s GROUP BY generation",
                              (prefix + "%",)).fetchall()  # fmt: skip
    return {int(g): int(c) for g, c in rows}


# --- 1. a million grants with 1-hour tokens -------------------------------------------------------------------


@dataclass
class MillionResult:
    grants: int
    due: int
    window: float
    load_seconds: float
    run: Run
    sim_cpu: float
    generations: dict[int, int]
    bulk_generations: dict[int, int]
    sim_stats: dict[str, Any]


def million(
    tmp: Path, n: int, window: float, progress: Callable[[str], None], *, analyze: bool = False
) -> MillionResult:
    url = f"sqlite://{tmp / 'million.db'}"
    due = max(1, round(n * window / HOUR))
    with simulator_process(HOUR) as sim:
        _setup_store(url, sim)
        t0 = time.time()
        bulk = n - due
        progress(f"1: loading {bulk:,} bulk grants (random sealed tokens, planned after the window)")
        lo, hi = t0 + HEADROOM + window, t0 + HEADROOM + HOUR
        specs = [RowSpec("bulk-", s, min(bulk, s + CHUNK), bulk, lo, hi, HOUR) for s in range(0, bulk, CHUNK)]
        for rows in _pool_rows(specs):
            _insert(url, rows)
        load_seconds = time.time() - t0
        if analyze:
            _analyze(url)
        instances = Instances(url, 1)
        try:
            progress(f"1: loading {due:,} grants due in the {window:.0f} s window (the simulator's tokens)")
            margin = 3.0 + due / 5000
            start = time.time() + margin
            _load_sim_grants(url, sim, "due-", due, start, start + window, HOUR)
            instances.ready()
            if time.time() > start:
                raise RuntimeError(f"loading the due grants took longer than the {margin:.0f} s before the window")
            if start + window > lo:
                raise RuntimeError(f"the bulk load took {load_seconds:.0f} s: bulk grants would fall in the window")
            progress(f"1: the scheduler runs the {window:.0f} s window")
            while time.time() < start - 0.5:
                time.sleep(0.05)
            cpu0 = cpu_seconds(sim.pid)
            instances.go(stop_at=start + window + TAIL)
            (run,) = instances.finish(stop=False)
            sim_cpu = cpu_seconds(sim.pid) - cpu0
        finally:
            instances.close()
        stats = sim.stats()
    return MillionResult(n, due, window, load_seconds, run, sim_cpu, _generations(url, "due-"),
                         _generations(url, "bulk-"), stats)  # fmt: skip


def _report_million(report: Report, r: MillionResult) -> None:
    run = r.run
    _check_simulator(r.sim_stats, "1,000,000 grants")
    if sum(r.generations.values()) != r.due or max(r.generations) > 2 or r.generations.get(2, 0) != run.refreshed:
        raise RuntimeError(f"1: generations of the due grants {r.generations} do not match {run.refreshed} refreshes")
    if r.bulk_generations != {1: r.grants - r.due}:
        raise RuntimeError(f"1: the bulk grants' generations moved: {r.bulk_generations}")
    report.rows.append(Row(
        NAME, f"SQLite, {r.grants:,} grants, 1 h tokens: refreshes done / planned in {r.window:.0f} s",
        "refreshed", run.refreshed, "planned", r.due, "count", run.refreshed / r.due, "(reported)",
        run.refreshed == r.due and run.missed == 0,
    ))  # fmt: skip
    report.rows.append(Row(
        NAME, "  the scheduler process's CPU seconds / wall seconds", "CPU", run.cpu, "wall", run.wall, "s",
        run.cpu / run.wall, "(reported)", True,
    ))  # fmt: skip
    report.notes.append(
        f"1: {r.grants:,} hot grants in one SQLite file, 1 h access tokens, planned refresh times spread evenly over "
        f"the hour; the {r.due:,} due in the {r.window:.0f} s window hold the simulator's refresh tokens, the "
        f"{r.grants - r.due:,} others are bulk rows with random sealed tokens planned after the window (never sent; "
        f"loaded in {r.load_seconds:.0f} s)"
    )
    report.notes.append(
        f"1: refreshed {run.refreshed:,} of {r.due:,} planned ({run.refreshed / run.wall:.0f}/s), outcomes "
        f"{run.outcomes}; missed windows {run.missed}; started after the token stopped being served {run.late}; "
        f"simulator: {r.sim_stats['successes']:,} refreshes, errors {r.sim_stats['errors']} (0 invalid_grant), "
        f"reuse {r.sim_stats['reuse_detections']}"
    )
    report.notes.append(
        f"1: CPU over the {run.wall:.0f} s run (the window and a {TAIL:.0f} s tail): scheduler {run.cpu:.1f} s "
        f"({100 * run.cpu / run.wall:.1f} % of one core), simulator {r.sim_cpu:.1f} s "
        f"({100 * r.sim_cpu / run.wall:.1f} %); "
        f"{1e6 * run.cpu / max(1, run.refreshed):.0f} us of scheduler CPU per refresh; {_batches([run])}"
    )
    report.notes.append(
        f"1: lag behind plan, the scheduler's histogram: p50 {bucket_quantile(run.lag_buckets, 0.5)}, p99 "
        f"{bucket_quantile(run.lag_buckets, 0.99)}; observed per refresh: p50 {quantile(run.lags, 0.5):.3f} s, "
        f"p99 {quantile(run.lags, 0.99):.3f} s, max {max(run.lags, default=math.nan):.3f} s"
    )


# --- 2. the most grants kept fresh with 60 s tokens -------------------------------------------------------------


@dataclass
class Step:
    grants: int
    run: Run
    sim_cpu: float

    @property
    def late_share(self) -> float:
        return self.run.late / max(1, self.run.started)

    @property
    def fresh(self) -> bool:
        return self.run.started > 0 and self.late_share < LATE_LIMIT and self.run.missed == 0


def short_tokens(
    tmp: Path, steps: tuple[int, ...], window: float, progress: Callable[[str], None], *, analyze: bool = False
) -> list[Step]:
    results: list[Step] = []
    with simulator_process(SHORT_TTL) as sim:
        for n in steps:
            url = f"sqlite://{tmp / f'short-{n}.db'}"
            _setup_store(url, sim)
            # One refresh interval: a grant refreshed at t is planned again at t + ttl - its plan offset.
            interval = SHORT_TTL - statistics.fmean(plan_offset(f"g-{i:07d}", SHORT_TTL) for i in range(200))
            instances = Instances(url, 1)
            try:
                margin = 5.0 + n / 4000
                start = time.time() + margin
                _load_sim_grants(url, sim, "g-", n, start, start + interval, SHORT_TTL)
                if analyze:
                    _analyze(url)
                instances.ready()
                if time.time() > start:
                    raise RuntimeError(f"loading {n:,} grants and starting the scheduler took more than {margin:.0f} s")
                while time.time() < start - 0.5:
                    time.sleep(0.05)
                progress(f"2: {n:,} grants with {SHORT_TTL:.0f} s tokens for {window:.0f} s")
                cpu0 = cpu_seconds(sim.pid)
                instances.go(stop_at=start + window)
                (run,) = instances.finish(stop=False)
                step = Step(n, run, cpu_seconds(sim.pid) - cpu0)
            finally:
                instances.close()
            results.append(step)
            _check_simulator(sim.stats(), f"{n:,} grants with 60 s tokens")
            if not step.fresh:
                break
    return results


def _report_short(report: Report, steps: list[Step]) -> None:
    fresh = [s.grants for s in steps if s.fresh]
    largest = max(fresh, default=0)
    last = steps[-1]
    report.rows.append(Row(
        NAME, f"SQLite, {SHORT_TTL:.0f} s tokens: the most grants one instance keeps fresh", "largest N", largest,
        "next step", last.grants if not last.fresh else math.nan, "count", math.nan, "(reported)", largest > 0,
    ))  # fmt: skip
    report.notes.append(
        f"2: N hot grants, {SHORT_TTL:.0f} s access tokens (served until 30 s before expiry, refreshed 6-9 s before "
        f"that), planned times spread over one refresh interval; kept fresh = < {100 * LATE_LIMIT:.0f} % started "
        "after the token stopped being served and 0 missed windows; steps stop at the first that fails"
    )
    report.notes.append("2:       N  refreshes/s  started  late %  missed  lag p99  sched CPU  sim CPU  fresh")
    for s in steps:
        run = s.run
        report.notes.append(
            f"2: {s.grants:>7,}  {run.refreshed / run.wall:>11.0f}  {run.started:>7,}  {100 * s.late_share:>6.2f}  "
            f"{run.missed:>6}  {quantile(run.lags, 0.99):>6.2f}s  {100 * run.cpu / run.wall:>8.0f}%  "
            f"{100 * s.sim_cpu / run.wall:>6.0f}%  {'yes' if s.fresh else 'NO'}"
        )


# --- 3. two instances vs one on PostgreSQL ----------------------------------------------------------------------


@dataclass
class ScaleOut:
    rates: dict[int, list[float]] = field(default_factory=lambda: {1: [], 2: []})
    runs: dict[int, list[Run]] = field(default_factory=lambda: {1: [], 2: []})
    seconds: dict[int, list[float]] = field(default_factory=lambda: {1: [], 2: []})
    sim_stats: dict[str, Any] = field(default_factory=dict)


def _drain(url: str, sim: SimulatorProcess, prefix: str, grants: int, instances: int) -> tuple[float, float, list[Run]]:
    """`grants` fall due at once; `instances` schedulers drain them. (refreshes/s, seconds, their runs)."""
    import psycopg

    now = time.time()
    _load_sim_grants(url, sim, prefix, grants, now - 5.0, now - 1.0, HOUR)
    running = Instances(url, instances)
    try:
        running.ready()
        with psycopg.connect(url, autocommit=True) as pg:
            t0 = time.time()
            running.go()
            deadline = t0 + 300.0
            query = "SELECT count(*), max(updated_at) FROM grants WHERE name LIKE %s AND generation > 1"
            while True:
                row = pg.execute(query, (prefix + "%",)).fetchone()
                assert row is not None
                if int(row[0]) >= grants:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"{instances} scheduler(s) refreshed {row[0]} of {grants} grants in 300 s")
                time.sleep(0.05)
            last = float(row[1])
        runs = running.finish(stop=True)
    finally:
        running.close()
    generations = _generations(url, prefix)
    if generations != {2: grants}:
        raise RuntimeError(f"{prefix}: generations {generations}: some grant was not refreshed exactly once")
    return grants / (last - t0), last - t0, runs


def scale_out(pg_url: str, grants: int, rounds: int, progress: Callable[[str], None]) -> ScaleOut:
    result = ScaleOut()
    with simulator_process(HOUR) as sim:
        _setup_store(pg_url, sim)
        for i in range(rounds):
            for count in (1, 2) if i % 2 == 0 else (2, 1):
                progress(f"3: round {i + 1}/{rounds}: {grants:,} grants due at once, {count} instance(s)")
                rate, seconds, runs = _drain(pg_url, sim, f"r{i}i{count}-", grants, count)
                result.rates[count].append(rate)
                result.seconds[count].append(seconds)
                result.runs[count].extend(runs)
        result.sim_stats = sim.stats()
    return result


def _report_scale_out(report: Report, r: ScaleOut, grants: int) -> None:
    _check_simulator(r.sim_stats, "PostgreSQL scale-out")
    two, one = summarize(r.rates[2]), summarize(r.rates[1])
    report.rows.append(Row(
        NAME, "PostgreSQL: refreshes/s, 2 scheduler instances vs 1", "2 instances", two.median, "1 instance",
        one.median, UNIT, two.median / one.median, "(reported)", True,
    ))  # fmt: skip
    report.notes.append(
        f"3: {grants:,} hot grants due at once per round (a fresh set each round), drained by 1 or 2 scheduler "
        f"processes on one PostgreSQL database (tests/pg_server.py); refreshes/s = grants / (last commit - go); "
        f"2 instances {two.spread(UNIT)}; 1 instance {one.spread(UNIT)}"
    )
    for count in (1, 2):
        runs = r.runs[count]
        cpu = sum(run.cpu for run in runs) / sum(run.wall for run in runs) * count
        split = [run.refreshed for run in runs]
        report.notes.append(
            f"3: {count} instance(s): CPU {100 * cpu:.0f} % of one core (all instances, over their windows); "
            f"refreshed per instance per round {split}; already refreshed elsewhere "
            f"{sum(run.outcomes.get('already_refreshed', 0) for run in runs)}; {_batches(runs)}"
        )
    report.notes.append(
        f"3: every grant refreshed exactly once (generation 1 -> 2, checked per round); simulator: "
        f"{r.sim_stats['successes']:,} refreshes, errors {r.sim_stats['errors']}, reuse detections "
        f"{r.sim_stats['reuse_detections']}"
    )


# --- the whole benchmark --------------------------------------------------------------------------------------


def run(quick: bool = False, *, grants: int | None = None, postgres: bool = True, analyze: bool = False) -> Report:
    n = grants if grants is not None else (QUICK_GRANTS if quick else DEFAULT_GRANTS)
    window = QUICK_WINDOW if quick else WINDOW
    if n * window / HOUR < 1:
        raise ValueError(f"the fleet benchmark needs at least {math.ceil(HOUR / window)} grants")
    started = time.perf_counter()
    report = Report(NAME, TITLE.replace("1,000,000", f"{n:,}"))

    def progress(message: str) -> None:
        print(f"  [fleet {time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    with (
        _quiet(),
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-fleet-") as tmp,
        _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(Path(tmp) / "recovery")}),
    ):
        _report_million(report, million(Path(tmp), n, window, progress, analyze=analyze))
        steps = short_tokens(Path(tmp), QUICK_STEPS if quick else STEPS, QUICK_STEP_WINDOW if quick else STEP_WINDOW,
                             progress, analyze=analyze)  # fmt: skip
        _report_short(report, steps)
        reason = _postgres_unavailable() if postgres else "not asked for"
        if reason is not None:
            report.notes.append(f"!!! SKIPPED: PostgreSQL scale-out: {reason} !!!")
        else:
            from tests.pg_server import PostgresServer

            pg_grants = QUICK_PG_GRANTS if quick else PG_GRANTS
            with PostgresServer() as pg:
                outcome = scale_out(pg.create_database("bench_fleet"), pg_grants,
                                    QUICK_PG_ROUNDS if quick else PG_ROUNDS, progress)  # fmt: skip
            _report_scale_out(report, outcome, pg_grants)
    analyzed = "ANALYZEd after loading (--analyze)" if analyze else "as loaded, never ANALYZEd"
    report.notes.append(f"the scheduler: SchedulerOptions(concurrency={CONCURRENCY}, per_provider={CONCURRENCY}), "
                        "other settings the defaults; one simulator stands for the providers; SQLite stores "
                        f"{analyzed}")  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check, under a minute; not a measurement")
    parser.add_argument("--grants", type=int, default=None, metavar="N", help="grants in part 1")
    parser.add_argument("--sqlite-only", action="store_true", help="skip the PostgreSQL scale-out")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="run SQLite's ANALYZE after each load (the store never does; see benchmarks/README.md)",
    )
    args = parser.parse_args()
    report = run(args.quick, grants=args.grants, postgres=not args.sqlite_only, analyze=args.analyze)
    print_report(report, sys.stdout)


if __name__ == "__main__":
    _main()
