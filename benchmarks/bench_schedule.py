"""Sustained refreshes/s with group commit vs one refresh at a time vs the store's bare durable commit rate, on
SQLite and on PostgreSQL, side by side in one run (issue 15, "What to measure").

A: group commit: `CONCURRENCY` forced refresh flows (``refresh_flow(force=True)``: claim, POST, commit) at once
through `grantkeeper.engine.group_commit.GroupCommit`, driven by the async driver, their token requests through the
aiohttp sender (`grantkeeper.tokens.aiohttp_transport`); claims share transactions, commits share transactions,
each batch durable once (PostgreSQL: two batches in flight at once), on the event loop ``grantkeeper schedule``
runs on (`grantkeeper.serve.eventloop`: uvloop when installed; ``GRANTKEEPER_SERVE_LOOP=asyncio`` for the stdlib
loop, as for the product), with the product's garbage collector setting (`collector_tuned`, which the other
sides, in the same process, get too). The same group commit on httpx's
`AsyncClient` runs in the same rounds and is reported in the notes. The refresh itself is unchanged: every claim
is durable before its request is sent, every successor durable before its flow ends, compare-and-set per grant.

B1: ``Keeper.refresh(name, force=True)`` one after another: two durable transactions per refresh.

B2: the store's raw single-row durable commit rate: a bare ``UPDATE`` of one row and ``COMMIT`` in a loop, on a
table of its own in the same SQLite file (WAL, ``synchronous=FULL``) or the same PostgreSQL database (``fsync``
on), as the refresh benchmark's "bare durable commit". A >= B2 means the refreshes beat the ceiling that one
commit per refresh cannot.

All three use one store (one SQLite file, one PostgreSQL database) and one provider simulator, which runs in a
process of its own so that its HTTP server does not share the measured process's GIL. Rounds interleave the
cases (A B1 B2, B2 B1 A, ...); each figure is the median of the per-round rates. The simulator rotates every
refresh token and revokes a family whose spent token comes back: the run checks it saw no ``invalid_grant`` and
no reuse, and that every grant's generation counts exactly its refreshes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import Report, Row, cpu_seconds, interleave, sim_provider, standalone
from benchmarks.bench_pgrefresh import _quiet
from benchmarks.bench_scale import KEY, RECOVERY_ENV, _environ, _postgres_unavailable
from grantkeeper import Keeper, RefreshPolicy, Secret
from grantkeeper._clock import SystemClock
from grantkeeper.engine.drivers import drive_async
from grantkeeper.engine.group_commit import GroupCommit, store_batch
from grantkeeper.engine.threaded import threaded
from grantkeeper.keys import KEY_ENV
from grantkeeper.protocol import refresh_flow
from grantkeeper.serve.eventloop import collector_tuned, loop_factory, loop_name
from grantkeeper.stores import open_store
from grantkeeper.tokens import aiohttp_transport
from grantkeeper.tokens.aiohttp_transport import AiohttpSender
from grantkeeper.tokens.sender import AsyncHttpSender
from grantkeeper.tokens.transport import async_client

NAME = "schedule"
TITLE = "sustained refreshes/s: group commit (A) vs one at a time (B1) and vs the bare durable commit rate (B2)"
POLICY = RefreshPolicy(lease_ttl=60.0, request_timeout=10.0, wait_timeout=60.0, deadline=60.0)
#: Refresh flows in flight at once through the group commit.
CONCURRENCY = 64
UNIT = "refreshes/s"
#: How late the simulator answers in the slow-provider side measurement (it answers at once in the targets' rounds).
SLOW_PROVIDER = 0.05
#: The product's event loop setting, read as `grantkeeper.serve.config` reads it.
LOOP = os.environ.get("GRANTKEEPER_SERVE_LOOP") or "auto"


# --- the simulator, in a process of its own ------------------------------------------------------------------


def _serve_simulator(conn: multiprocessing.connection.Connection, access_ttl: float) -> None:
    """The child: one rotating simulator; answers ("issue", n) with n new grants, ("stats", None) with its counters,
    and ends at ("stop", None) or when the parent goes away. Its access tokens live `access_ttl` seconds."""
    from grantkeeper.testing.simulator import Delay, ProviderSimulator

    with ProviderSimulator(rotation="always", access_ttl=access_ttl) as sim:
        conn.send((sim.url, sim.client_id, sim.client_secret))
        while True:
            try:
                command, argument = conn.recv()
            except EOFError:
                return
            if command == "issue":
                conn.send([sim.issue_grant() for _ in range(argument)])
            elif command == "delay":  # (seconds, n): the next n token requests wait `seconds` before their answer
                sim.inject(Delay(argument[0]), times=argument[1])
                conn.send(None)
            elif command == "stats":
                conn.send(sim.stats.as_dict())
            else:
                return


@dataclass
class SimulatorProcess:
    """The parent's handle on the simulator child: what `sim_provider` reads, and the child's grants and stats."""

    url: str
    client_id: str
    client_secret: str
    conn: multiprocessing.connection.Connection
    pid: int  # the child's, for its CPU time

    def issue(self, n: int) -> list[str]:
        self.conn.send(("issue", n))
        tokens: list[str] = self.conn.recv()
        return tokens

    def delay(self, seconds: float, requests: int) -> None:
        """Answer each of the next `requests` token requests `seconds` late (the simulator's `Delay` fault)."""
        self.conn.send(("delay", (seconds, requests)))
        self.conn.recv()

    def stats(self) -> dict[str, Any]:
        self.conn.send(("stats", None))
        stats: dict[str, Any] = self.conn.recv()
        return stats


@contextlib.contextmanager
def simulator_process(access_ttl: float = 3600.0) -> Iterator[SimulatorProcess]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_simulator, args=(child, access_ttl), name="bench-simulator", daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the simulator process did not start within 60 s")
        url, client_id, client_secret = parent.recv()
        assert process.pid is not None
        yield SimulatorProcess(url, client_id, client_secret, parent, process.pid)
    finally:
        with contextlib.suppress(OSError):
            parent.send(("stop", None))
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


# --- the three cases ------------------------------------------------------------------------------------------


def _import(store: Any, sim: SimulatorProcess, prefix: str, n: int) -> list[str]:
    names = [f"{prefix}{i:05d}" for i in range(n)]
    for name, token in zip(names, sim.issue(n), strict=True):
        store.import_grant(name, provider="sim", refresh_token=Secret(token), scopes=(), now=time.time())
    return names


class OneAtATime:
    """B1: the keeper's forced refresh, one grant after another."""

    def __init__(self, url: str, names: list[str]) -> None:
        self.names = names
        self.keeper = Keeper.open(url)
        self._names = itertools.cycle(names)
        self.refreshes = 0

    def round(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            self.keeper.refresh(next(self._names), force=True)
        self.refreshes += n
        return n / (time.perf_counter() - started)

    def close(self) -> None:
        self.keeper.close()


class Grouped:
    """A: every grant of `names` refreshed once per round, `concurrency` flows at a time, through `GroupCommit`."""

    def __init__(self, url: str, names: list[str], concurrency: int, client: str = "aiohttp") -> None:
        self.store = open_store(url)
        self._run_batch = store_batch(self.store)  # as the scheduler runs them
        self.client = client
        self.flushers = 1
        self.names = names
        self.concurrency = concurrency
        self.refreshes = 0
        self.sizes: list[int] = []
        # The loop `grantkeeper schedule` and `serve` run on ($GRANTKEEPER_SERVE_LOOP chooses, as it does theirs).
        self._runner = asyncio.Runner(loop_factory=loop_factory(LOOP))
        self._http = self._runner.run(self._client())

    async def batch(self, calls: list[Any]) -> list[Any]:
        return await self._run_batch(calls)

    async def _client(self) -> Any:
        return aiohttp_transport.session() if self.client == "aiohttp" else async_client()

    def round(self) -> float:
        grouped = GroupCommit(threaded(self.store), self.batch, flushers=self.flushers)
        sender = AiohttpSender(self._http) if self.client == "aiohttp" else AsyncHttpSender(self._http)

        async def refresh_all() -> None:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(name: str) -> None:
                async with gate:
                    flow = refresh_flow(name, worker="bench-scheduler", force=True, policy=POLICY)
                    await drive_async(flow, store=grouped, sender=sender, clock=SystemClock())

            await asyncio.gather(*(one(name) for name in self.names))

        started = time.perf_counter()
        self._runner.run(refresh_all())
        rate = len(self.names) / (time.perf_counter() - started)
        self.refreshes += len(self.names)
        self.sizes.extend(grouped.sizes)
        return rate

    def close(self) -> None:
        self._runner.run(self._http.close() if self.client == "aiohttp" else self._http.aclose())
        self._runner.close()
        self.store.close()


class BareCommits:
    """B2: one row of a table of its own in the same store, ``UPDATE`` + ``COMMIT`` durably, in a loop."""

    BLOB = b"x" * 600  # about a sealed token set

    def __init__(self, url: str, sqlite_path: Path | None) -> None:
        self._sqlite = sqlite_path is not None
        if sqlite_path is not None:
            self.db: Any = sqlite3.connect(str(sqlite_path), isolation_level=None)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
        else:
            import psycopg

            self.db = psycopg.connect(url, autocommit=True)
        self.db.execute(
            "CREATE TABLE bench_bare (id INTEGER PRIMARY KEY, blob BYTEA, generation BIGINT, updated_at DOUBLE "
            "PRECISION)"
            if not self._sqlite
            else "CREATE TABLE bench_bare (id INTEGER PRIMARY KEY, blob BLOB, generation INTEGER, updated_at REAL)"
        )
        self.db.execute("INSERT INTO bench_bare VALUES (1, NULL, 1, 0)")
        self._begin = "BEGIN IMMEDIATE" if self._sqlite else "BEGIN"
        self._update = (
            "UPDATE bench_bare SET blob = ?, generation = generation + 1, updated_at = ? WHERE id = 1"
            if self._sqlite
            else "UPDATE bench_bare SET blob = %s, generation = generation + 1, updated_at = %s WHERE id = 1"
        )

    def commit(self) -> None:
        self.db.execute(self._begin)
        self.db.execute(self._update, (self.BLOB, time.time()))
        self.db.execute("COMMIT")

    def round(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            self.commit()
        return n / (time.perf_counter() - started)

    def close(self) -> None:
        self.db.close()


# --- one store kind ---------------------------------------------------------------------------------------------


@dataclass
class Spent:
    """The CPU one case used, in this process (every thread) and in the simulator's, over its refreshes."""

    here: float = 0.0
    simulator: float = 0.0
    refreshes: int = 0

    def counted(self, sim: SimulatorProcess, refreshes: int, case: Callable[[], float]) -> Callable[[], float]:
        """`case`, its CPU added here on every call (warm-up rounds too)."""

        def run() -> float:
            here, there = time.process_time(), cpu_seconds(sim.pid)
            rate = case()
            self.here += time.process_time() - here
            self.simulator += cpu_seconds(sim.pid) - there
            self.refreshes += refreshes
            return rate

        return run

    def us(self) -> tuple[float, float]:
        """(this process, the simulator): microseconds of CPU per refresh."""
        return 1e6 * self.here / self.refreshes, 1e6 * self.simulator / self.refreshes


def _slow(sim: SimulatorProcess, requests: int, case: Callable[[], float]) -> Callable[[], float]:
    """`case` against a provider that answers each of its `requests` token requests `SLOW_PROVIDER` s late."""

    def run() -> float:
        sim.delay(SLOW_PROVIDER, requests)
        return case()

    return run


def _measure(report: Report, kind: str, url: str, sqlite_path: Path | None, sim: SimulatorProcess, quick: bool) -> None:
    rounds, warmup = (3, 1) if quick else (9, 2)
    grouped_grants = 256 if quick else 512
    one_per_round = 50 if quick else 150
    commits_per_round = 200 if quick else 600
    setup = open_store(url, migrate=True) if sqlite_path is None else open_store(url)
    try:
        setup.put_provider(sim_provider(sim), now=time.time())
        httpx_names = _import(setup, sim, "httpx-", grouped_grants)
    finally:
        setup.close()
    one, grouped = _sides(url, sqlite_path, sim, "", one_per_round, grouped_grants)
    grouped_httpx = Grouped(url, httpx_names, CONCURRENCY, client="httpx")
    bare = BareCommits(url, sqlite_path)
    spent = {case: Spent() for case in ("grouped", "one", "bare")}
    try:
        samples = interleave(
            {
                "grouped": spent["grouped"].counted(sim, grouped_grants, grouped.round),
                "grouped-httpx": grouped_httpx.round,
                "one": spent["one"].counted(sim, one_per_round, lambda: one.round(one_per_round)),
                "bare": spent["bare"].counted(sim, commits_per_round, lambda: bare.round(commits_per_round)),
            },
            rounds=rounds,
            warmup=warmup,
        )
        check = open_store(url)
        try:
            wrong = [n for n in one.names + grouped.names if check.lease_holder(n, now=time.time()) is not None]
            per_grant = {n: check.get_grant(n).generation for n in grouped.names + httpx_names}
        finally:
            check.close()
    finally:
        one.close()
        grouped.close()
        grouped_httpx.close()
        bare.close()
    expected = 1 + (rounds + warmup)
    if wrong or set(per_grant.values()) != {expected}:
        raise RuntimeError(f"{kind}: leases left {len(wrong)}, grouped generations {sorted(set(per_grant.values()))}"
                           f" (expected {expected} each)")  # fmt: skip
    a, b1, b2 = samples["grouped"], samples["one"], samples["bare"]
    report.rows.append(Row(
        NAME, f"{kind}: refreshes/s, group commit vs one at a time", f"group commit x{CONCURRENCY}", a.median,
        "Keeper.refresh loop", b1.median, UNIT, a.median / b1.median, ">= 3.0", a.median / b1.median >= 3.0,
    ))  # fmt: skip
    report.rows.append(Row(
        NAME, f"{kind}: refreshes/s vs bare durable commits/s", f"group commit x{CONCURRENCY}", a.median,
        "bare UPDATE+COMMIT", b2.median, UNIT, a.median / b2.median, ">= 1.0", a.median / b2.median >= 1.0,
    ))  # fmt: skip
    sizes = grouped.sizes
    httpx_rate = samples["grouped-httpx"]
    report.notes.append(
        f"{kind}: group commit (aiohttp sender) {a.spread(UNIT)}; one at a time {b1.spread(UNIT)}; bare commits "
        f"{b2.spread(UNIT)}"
    )
    report.notes.append(
        f"{kind}: the same group commit on httpx's AsyncClient (AsyncHttpSender): {httpx_rate.spread(UNIT)}, "
        f"{httpx_rate.median / b1.median:.2f}x one at a time"
    )
    report.notes.append(
        f"{kind}: {len(sizes) / grouped.refreshes:.3f} durable commits per grouped refresh (one at a time: 2); "
        f"{len(sizes)} batches of {sum(sizes)} calls (claims and commits): mean {statistics.mean(sizes):.1f}, "
        f"median {statistics.median(sizes):.0f}, max {max(sizes)}; {grouped.refreshes} grouped refreshes over "
        f"{len(grouped.names)} grants, {one.refreshes} one at a time; {CONCURRENCY} flows in flight, "
        f"{grouped.flushers} batch(es) at once; the grouped sides on the {loop_name(LOOP)} event loop"
    )
    report.notes.append(_cpu_note(kind, spent, b2.median))


def _sides(url: str, sqlite_path: Path | None, sim: SimulatorProcess, prefix: str, one_at_a_time: int,
           grouped: int) -> tuple[OneAtATime, Grouped]:  # fmt: skip
    """B1 over `one_at_a_time` new grants and A over `grouped` more, named after `prefix`."""
    setup = open_store(url)
    try:
        one_names = _import(setup, sim, f"{prefix}one-", one_at_a_time)
        grouped_names = _import(setup, sim, f"{prefix}group-", grouped)
    finally:
        setup.close()
    side = Grouped(url, grouped_names, CONCURRENCY)
    # PostgreSQL runs two batches side by side (a batch there waits on round trips); SQLite's writers take turns.
    side.flushers = 1 if sqlite_path is not None else 2
    return OneAtATime(url, one_names), side


def _slow_provider(report: Report, kind: str, url: str, sqlite_path: Path | None, sim: SimulatorProcess,
                   quick: bool) -> None:  # fmt: skip
    """Side measurement, no target: group commit vs one at a time against a provider that answers
    `SLOW_PROVIDER` seconds late, on grants of their own in the same store."""
    rounds, warmup = (2, 1) if quick else (3, 1)
    grants, one_per_round = (256, 10) if quick else (512, 20)
    one, grouped = _sides(url, sqlite_path, sim, "slow-", one_per_round, grants)
    try:
        slow = interleave(
            {
                "grouped": _slow(sim, grants, grouped.round),
                "one": _slow(sim, one_per_round, lambda: one.round(one_per_round)),
            },
            rounds=rounds,
            warmup=warmup,
        )
    finally:
        one.close()
        grouped.close()
    check = open_store(url)
    try:
        generations = {check.get_grant(n).generation for n in grouped.names}
    finally:
        check.close()
    if generations != {1 + rounds + warmup}:
        raise RuntimeError(f"{kind}: slow-provider grouped generations {sorted(generations)} (expected "
                           f"{1 + rounds + warmup} each)")  # fmt: skip
    a, b1 = slow["grouped"], slow["one"]
    report.notes.append(
        f"{kind}, side measurement (no target): a provider that answers {SLOW_PROVIDER * 1000:.0f} ms late: group "
        f"commit {a.spread(UNIT)}; one at a time {b1.spread(UNIT)}: {a.median / b1.median:.1f}x"
    )


def _cpu_note(kind: str, spent: dict[str, Spent], bare_rate: float) -> str:
    """Where each side's time goes: its CPU per refresh, and what the bare commit rate would need."""
    a_here, a_sim = spent["grouped"].us()
    b_here, b_sim = spent["one"].us()
    bare_here, _ = spent["bare"].us()
    cores = os.cpu_count() or 1
    budget = 1e6 / bare_rate
    return (
        f"{kind}: CPU per refresh (all rounds, warm-up included): group commit {a_here:.0f} us in this process "
        f"(one event loop: at most {1e6 / a_here:.0f} refreshes/s on a core) + {a_sim:.0f} us in the simulator; "
        f"one at a time {b_here:.0f} + {b_sim:.0f} us; a bare durable commit {bare_here:.0f} us of CPU. The bare "
        f"commit rate ({bare_rate:.0f}/s) leaves {budget:.0f} us per refresh to the scheduler's event loop (one "
        f"core) and {cores * budget:.0f} us to the loop and the simulator together ({cores} cores)"
        + ("; PostgreSQL's own server processes are not counted" if kind == "PostgreSQL" else "")
    )


def _http_floor(report: Report, sim: SimulatorProcess, quick: bool) -> None:
    """aiohttp's own cost per request, with nothing of grantkeeper's: a bare ``ClientSession.post`` and ``read()``
    of a refresh-sized form, `CONCURRENCY` in flight, to the same simulator (a path it answers 404, so no grant is
    touched), on the same event loop; the loop thread's CPU per request."""
    requests = 1024 if quick else 4096
    url = sim.url.rsplit("/", 1)[0] + "/floor"
    body = b"grant_type=refresh_token&refresh_token=" + b"r" * 43 + b"&client_id=c&client_secret=" + b"s" * 32
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}

    async def exchange() -> float:
        async with aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one() -> None:
                async with gate, session.post(url, data=body, headers=headers) as response:
                    await response.read()

            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))  # the connections open
            started = time.thread_time()
            await asyncio.gather(*(one() for _ in range(requests)))
            return time.thread_time() - started

    with asyncio.Runner(loop_factory=loop_factory(LOOP)) as runner:
        spent = runner.run(exchange())
    report.notes.append(
        f"aiohttp alone (a bare ClientSession.post and read(), {CONCURRENCY} in flight, {requests} requests to the "
        f"simulator): {1e6 * spent / requests:.0f} us of the event loop's CPU per request"
    )


def run(quick: bool = False, *, kinds: tuple[str, ...] = ("sqlite", "postgres")) -> Report:
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    with (
        _quiet(),
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-schedule-") as tmp,
        _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(Path(tmp) / "recovery")}),
        simulator_process() as sim,
        collector_tuned(),  # as `grantkeeper schedule` runs; the one-at-a-time and bare sides get it too
    ):
        if "sqlite" in kinds:
            path = Path(tmp) / "grants.db"
            _measure(report, "SQLite", f"sqlite://{path}", path, sim, quick)
            _slow_provider(report, "SQLite", f"sqlite://{path}", path, sim, quick)
        _http_floor(report, sim, quick)
        if "postgres" in kinds:
            reason = _postgres_unavailable()
            if reason is not None:
                report.notes.append(f"!!! SKIPPED: PostgreSQL: {reason} !!!")
            else:
                from tests.pg_server import PostgresServer

                with PostgresServer() as pg:
                    database = pg.create_database("bench_schedule")
                    _measure(report, "PostgreSQL", database, None, sim, quick)
                    _slow_provider(report, "PostgreSQL", database, None, sim, quick)
        stats = sim.stats()
    errors = stats["errors"]
    report.notes.append(
        f"simulator (own process): {stats['successes']} refreshes, errors {errors}, reuse detections "
        f"{stats['reuse_detections']}"
    )
    if errors or stats["reuse_detections"]:
        raise RuntimeError(f"the simulator saw errors {errors} / reuse {stats['reuse_detections']}")
    report.seconds = time.perf_counter() - started
    return report


def _main() -> None:
    standalone(run)


if __name__ == "__main__":
    _main()
