"""PostgreSQL refreshes: round trips per claim, per commit and per refresh, and the time a refresh takes, with the
write transactions pipelined (A) and statement by statement (B), on the blocking store and the native async one.

Round trips are counted on the wire (`tests.pg_roundtrips`: a relay on 127.0.0.1 counts each time the client speaks
after the server last spoke), on the pool's connections only: the liveness session's periodic check is not part of
a refresh. B runs the same statements one round trip each, as every release before pipelining did (BEGIN, each
statement, COMMIT); A lets the statements whose results the transaction does not read travel with the next one.
A refresh here is a forced one (``refresh_flow(force=True)``: claim, POST to the simulator, commit) through the
protocol's drivers, the blocking `drive` on `PostgresStore` and `drive_async` on `AsyncPostgresStore`.

Timing: rounds of refreshes, A and B interleaved; the ratio is time(A) / time(B) per refresh. On loopback a round
trip costs tens of microseconds, so the time saved is small here and grows with the network's latency: the counts
are the figure that carries to a real network (each round trip saved there is one network latency).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import Report, Row, interleave, sim_provider, standalone
from benchmarks.bench_scale import KEY, RECOVERY_ENV, _environ, _postgres_unavailable
from grantkeeper import RefreshPolicy, Secret
from grantkeeper._clock import SystemClock
from grantkeeper.engine.drivers import drive, drive_async
from grantkeeper.keys import KEY_ENV
from grantkeeper.protocol.refresh import refresh_flow
from grantkeeper.stores import open_store
from grantkeeper.testing.simulator import ProviderSimulator
from grantkeeper.tokens.sender import AsyncHttpSender, HttpSender

NAME = "pgrefresh"
TITLE = "PostgreSQL round trips per refresh and refresh time: pipelined (A) vs one statement per round trip (B)"
POLICY = RefreshPolicy(lease_ttl=30.0, request_timeout=5.0, wait_timeout=30.0, deadline=30.0)


class _Face:
    """One store on one face (blocking or async), with the calls the benchmark makes."""

    def __init__(self, url: str, face: str, pipelined: bool, portal: Any) -> None:
        from grantkeeper.stores.postgres_async import AsyncPostgresStore

        self.face = face
        self._portal = portal
        self._http: Any = None
        self._names = (f"{face}-{'p' if pipelined else 's'}-{n}" for n in itertools.count())
        if face == "sync":
            self.store: Any = open_store(url)
            self._http = httpx.Client()
            self._sender: Any = HttpSender(self._http)
        else:
            self.store = portal.call(AsyncPostgresStore.open, url)
            self._http = portal.call(_async_client)
            self._sender = AsyncHttpSender(self._http)
        self.store.pipelined = pipelined

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.store, method)
        return fn(*args, **kwargs) if self.face == "sync" else self._portal.call(_awaited, fn, args, kwargs)

    def new_grant(self, sim: ProviderSimulator) -> str:
        name = next(self._names)
        self.call("import_grant", name, provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(),
                  now=time.time())  # fmt: skip
        return name

    def refresh(self, name: str) -> None:
        flow = refresh_flow(name, worker=f"bench-{self.face}", force=True, policy=POLICY)
        if self.face == "sync":
            drive(flow, store=self.store, sender=self._sender, clock=SystemClock())
        else:
            self._portal.call(_drive_async, flow, self.store, self._sender)

    def close(self) -> None:
        if self.face == "sync":
            self._http.close()
            self.store.close()
        else:
            self._portal.call(self._http.aclose)
            self._portal.call(self.store.close)


async def _async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient()


async def _awaited(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await fn(*args, **kwargs)


async def _drive_async(flow: Any, store: Any, sender: Any) -> None:
    await drive_async(flow, store=store, sender=sender, clock=SystemClock())


def _round_trips(face: _Face, sim: ProviderSimulator, counter: Any) -> dict[str, int]:
    """Round trips of one forced refresh, of its claim alone and of its commit alone (each on a fresh grant)."""
    name = face.new_grant(sim)
    face.refresh(name)  # warm: the liveness session is open, the pool's connection is up
    counts: dict[str, int] = {}
    name = face.new_grant(sim)
    counter.reset()
    face.refresh(name)
    counts["refresh"] = counter.turns
    name = face.new_grant(sim)
    counter.reset()
    claim = face.call("claim", name, worker=f"bench-{face.face}", lease_ttl=30.0, now=time.time(), force=True,
                      seen_generation=None)  # fmt: skip
    counts["claim"] = counter.turns
    from grantkeeper.model.claims import GrantUpdate

    update = GrantUpdate(refresh_token=Secret("r" * 40), access_token=Secret("a" * 40), expires_at=time.time() + 3600,
                         scopes=None)  # fmt: skip
    counter.reset()
    face.call("commit", claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=update, now=time.time())
    counts["commit"] = counter.turns
    return counts


def _timed(face: _Face, sim: ProviderSimulator, per_round: int) -> Callable[[], float]:
    def one_round() -> float:
        names = [face.new_grant(sim) for _ in range(per_round)]
        started = time.perf_counter_ns()
        for name in names:
            face.refresh(name)
        return (time.perf_counter_ns() - started) / per_round

    return one_round


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("grantkeeper")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(quick: bool = False) -> Report:
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    reason = _postgres_unavailable()
    if reason is not None:
        report.notes.append(f"!!! SKIPPED: the PostgreSQL refresh benchmark: {reason} !!!")
        return report
    from anyio.from_thread import start_blocking_portal
    from tests.pg_roundtrips import counted
    from tests.pg_server import PostgresServer

    rounds, warmup, per_round = (3, 1, 5) if quick else (15, 3, 20)
    with (
        _quiet(),
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-pgrefresh-") as tmp,
        _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(Path(tmp) / "recovery")}),
        ProviderSimulator(rotation="always") as sim,
        PostgresServer() as pg,
        start_blocking_portal() as portal,
    ):
        url = pg.create_database("bench_pgrefresh")
        setup = open_store(url, migrate=True)
        setup.put_provider(sim_provider(sim), now=time.time())
        setup.close()
        with counted(url) as (counter, counted_url):
            for face_name in ("sync", "async"):
                faces = {pipelined: _Face(counted_url, face_name, pipelined, portal) for pipelined in (True, False)}
                try:
                    counts = {pipelined: _round_trips(face, sim, counter) for pipelined, face in faces.items()}
                    for what in ("claim", "commit", "refresh"):
                        after, before = counts[True][what], counts[False][what]
                        report.rows.append(Row(
                            NAME, f"{face_name}: round trips per {what}", "pipelined", after, "one per statement",
                            before, "count", after / before, "< 1.00", after < before,
                        ))  # fmt: skip
                    samples = interleave({str(p): _timed(face, sim, per_round) for p, face in faces.items()},
                                         rounds=rounds, warmup=warmup)  # fmt: skip
                    a, b = samples["True"], samples["False"]
                    report.rows.append(Row(
                        NAME, f"{face_name}: forced refresh (claim, POST, commit)", "pipelined", a.median,
                        "one per statement", b.median, "ns", a.median / b.median, "<= 1.00", a.median <= b.median,
                    ))  # fmt: skip
                    report.notes.append(f"{face_name} pipelined: {a.spread('ns')}; one per statement: {b.spread('ns')}")
                finally:
                    for face in faces.values():
                        face.close()
    report.notes.append(
        "round trips counted on the wire between the pool and the server (the liveness session excluded); a refresh "
        "here is forced (no read before the claim); the POST goes to the simulator on loopback"
    )
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__":
    standalone(run)
