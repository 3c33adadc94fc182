"""One durable refresh through the keeper vs one bare POST plus one durable SQLite commit.

A: ``keeper.refresh(name, force=True)``: the whole transaction of docs/design.md (read the grant, claim the lease
and record the attempt durably, POST, parse, commit generation+1 durably), on an SQLite store in a temp dir.

B: the least a correct hand-written integration does: POST a refresh_token grant with an httpx.Client of the
same settings as the keeper's (keep-alive), keep the rotated refresh token from the JSON answer, and commit it
durably: a separate SQLite file in the same directory, WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE; UPDATE
...; COMMIT`` of one row holding a blob of similar size (the token response). It has no lease, no attempt
record, no encryption and no single-flight: it is the floor, not a competitor.

Both rotate real tokens at the same simulator (separate grant families; a refresh token sent twice would be
answered with invalid_grant and revoke the family, which the benchmark checks for). Both fsync: the keeper
through its own store, the baseline through its own commit.

The breakdown rows time a bare durable commit alone and a bare POST alone in the same interleaved rounds, and
an instrumented pass (after the timed rounds, so the timing wrappers are not in A) splits the keeper's refresh
into its store transactions, the HTTP exchange and the rest.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import pstats
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns

from benchmarks._common import (
    BarePoster,
    Report,
    Row,
    format_value,
    instrumented_refreshes,
    interleave,
    sim_provider,
    standalone,
)
from grantkeeper import Keeper
from grantkeeper.testing.simulator import ProviderSimulator

NAME = "refresh"
TITLE = "durable refresh via keeper vs bare POST + durable SQLite commit"
TARGET = 1.3
GRANT = "bench"


class BareRefresher:
    """The baseline: a refresh as a careful integration would write it by hand, nothing more."""

    def __init__(self, sim: ProviderSimulator, db_path: Path) -> None:
        self.poster = BarePoster(sim)
        self.db = sqlite3.connect(str(db_path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute(
            "CREATE TABLE grants (name TEXT PRIMARY KEY, blob BLOB, generation INTEGER NOT NULL, updated_at REAL)"
        )
        self.db.execute("INSERT INTO grants VALUES (?, NULL, 1, ?)", (GRANT, time.time()))
        self.generation = 1
        self.blob = b""

    def post(self) -> bytes:
        return self.poster.post()

    def commit(self, blob: bytes) -> None:
        """One durable transaction: BEGIN IMMEDIATE; UPDATE one row; COMMIT (fsync of the WAL)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "UPDATE grants SET blob = ?, generation = generation + 1, updated_at = ? WHERE name = ?",
                (blob, time.time(), GRANT),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.generation += 1
        self.blob = blob

    def refresh(self) -> None:
        self.commit(self.post())

    def close(self) -> None:
        self.poster.close()
        self.db.close()


def _per_op(fn: Callable[[], object], ops: int) -> Callable[[], float]:
    def round_() -> float:
        t0 = perf_counter_ns()
        for _ in range(ops):
            fn()
        return (perf_counter_ns() - t0) / ops

    return round_


def profile(keeper: Keeper, refreshes: int, top: int = 25) -> list[str]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(refreshes):
        keeper.refresh(GRANT, force=True)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    body = text.getvalue().strip().splitlines()
    return [f"cProfile of {refreshes} keeper refreshes, top {top} by own time:", *body]


def run(quick: bool = False, *, with_profile: bool = False) -> Report:
    ops, rounds, warmup, instrumented = (3, 7, 1, 10) if quick else (10, 101, 3, 100)
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    with ProviderSimulator() as sim, tempfile.TemporaryDirectory(prefix="grantkeeper-bench-") as tmp:
        keeper = Keeper.open(f"sqlite://{Path(tmp) / 'grants.db'}")
        bare = BareRefresher(sim, Path(tmp) / "baseline.db")
        try:
            keeper.add_provider(sim_provider(sim))
            keeper.import_grant(GRANT, provider="sim", refresh_token=sim.issue_grant())
            first = keeper.store.get_grant(GRANT).generation
            keeper_refreshes = 0

            def keeper_refresh() -> None:
                nonlocal keeper_refreshes
                keeper.refresh(GRANT, force=True)
                keeper_refreshes += 1

            bare.refresh()  # a real blob for the commit-alone case
            blob = bare.blob
            results = interleave(
                {
                    "keeper": _per_op(keeper_refresh, ops),
                    "baseline": _per_op(bare.refresh, ops),
                    "commit": _per_op(lambda: bare.commit(blob), ops),
                    "post": _per_op(bare.post, ops),
                },
                rounds=rounds,
                warmup=warmup,
            )
            grant = keeper.store.get_grant(GRANT)
            stats = sim.stats
            if grant.generation - first != keeper_refreshes or stats.errors:
                raise RuntimeError(
                    f"refresh benchmark went wrong: generation advanced {grant.generation - first} for "
                    f"{keeper_refreshes} refreshes; simulator errors {dict(stats.errors)}"
                )
            keeper_sealed, baseline_blob = _row_sizes(keeper, bare)

            a, b = results["keeper"].median, results["baseline"].median
            commit, post = results["commit"].median, results["post"].median
            ratio = a / b
            report.rows.append(
                Row(
                    bench=NAME,
                    measured="durable refresh (per refresh)",
                    a_label="keeper.refresh(force=True)",
                    a=a,
                    b_label="POST + durable commit",
                    b=b,
                    unit="ns",
                    ratio=ratio,
                    target=f"<= {TARGET:.1f}",
                    passed=ratio <= TARGET,
                )
            )
            report.notes += [
                f"grantkeeper      {results['keeper'].spread('ns')}",
                f"baseline         {results['baseline'].spread('ns')}",
                f"breakdown: bare durable SQLite commit alone  {results['commit'].spread('ns')}",
                f"breakdown: bare POST alone (rotating)        {results['post'].spread('ns')}",
                f"A - B = {format_value(a - b, 'ns')} per refresh; the keeper makes 2 durable transactions per "
                f"refresh (claim, commit) where the baseline makes 1 (~{format_value(commit, 'ns')})",
                "floor for any design with 2 durable transactions and zero other cost, from this run's medians: "
                f"(POST + 2 x commit) / (POST + commit) = {(post + 2 * commit) / (post + commit):.2f}",
                f"{ops} refreshes per round; {keeper_refreshes} keeper refreshes, all committed; simulator: "
                f"{stats.refresh_calls} token requests, {stats.rotations} rotations, no errors",
                f"row size: keeper's sealed refresh + access token {keeper_sealed} bytes; baseline blob "
                f"{baseline_blob} bytes",
            ]
            report.notes += instrumented_refreshes(keeper, itertools.repeat(GRANT), instrumented)
            if with_profile:
                report.notes += profile(keeper, instrumented)
        finally:
            bare.close()
            keeper.close()
    report.seconds = time.perf_counter() - started
    return report


def _row_sizes(keeper: Keeper, bare: BareRefresher) -> tuple[int, int]:
    path = keeper.store.path
    assert path is not None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT length(refresh_token) + length(access_token) FROM grants WHERE name = ?", (GRANT,)
        ).fetchone()
    conn.close()
    return int(row[0]), len(bare.blob)


if __name__ == "__main__":
    standalone(run)
