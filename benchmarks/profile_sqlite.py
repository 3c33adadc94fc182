"""Where an SQLite store's refresh transactions and cold reads spend their time, statement by statement.

Not a benchmark (no ratio, no target): a profile to read beside `refresh` and `scale`. It runs forced keeper
refreshes on an SQLite store in a temporary directory (WAL, ``synchronous=FULL``, the store's own settings) and,
in the same process, cold ``access_token`` reads on a store of `--grants` grants, and prints for each store call
(claim, commit, the cold read):

- how many SQL statements one call runs, and the median time of each (``COMMIT`` is where the fsync happens);
- the median time of the call's other work: crypto (seal, open, fingerprint), recovery-directory check,
  liveness, Python;
- for the refresh, the HTTP exchange and the rest of the flow.

The connection is wrapped so that every ``execute`` is timed, so absolute figures carry that small overhead on
every statement; compare statement counts and shares, and time whole calls with the benchmarks themselves.

    .venv/bin/python -m benchmarks.profile_sqlite               # 300 refreshes, 2,000 cold reads of 100,000 grants
    .venv/bin/python -m benchmarks.profile_sqlite --quick       # fewer of each, for a smoke check
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from benchmarks._common import environment, format_value, sim_provider

__all__ = ["main", "profile_cold_reads", "profile_refreshes"]


class _Recorder:
    """Per-call samples: for each store call, the time of each statement (by its first words) and the total."""

    def __init__(self) -> None:
        self.call: str | None = None
        self.current: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self.per_call: dict[str, list[dict[str, int]]] = defaultdict(list)
        self.statements: dict[str, list[int]] = defaultdict(list)

    def add(self, label: str, ns: int) -> None:
        if self.call is not None:
            self.current[label] += ns
            self.counts[label] += 1

    @contextmanager
    def calling(self, name: str) -> Iterator[None]:
        outer = self.call
        if outer is not None:  # nested: counted inside the outer call
            yield
            return
        self.call, self.current, self.counts = name, defaultdict(int), defaultdict(int)
        t0 = perf_counter_ns()
        try:
            yield
        finally:
            self.current["(whole call)"] = perf_counter_ns() - t0
            self.per_call[name].append(dict(self.current))
            self.statements[name].append(sum(n for k, n in self.counts.items() if k.startswith("sql ")))
            self.call = None


def _label(sql: str) -> str:
    words = " ".join(sql.split())
    return "sql " + (words[:72] + "..." if len(words) > 75 else words)


class _TimedCursor:
    def __init__(self, cursor: Any, recorder: _Recorder, label: str) -> None:
        self._cursor, self._recorder, self._label = cursor, recorder, label

    def fetchone(self) -> Any:
        t0 = perf_counter_ns()
        try:
            return self._cursor.fetchone()
        finally:
            self._recorder.current[self._label] += perf_counter_ns() - t0

    def fetchall(self) -> Any:
        t0 = perf_counter_ns()
        try:
            return self._cursor.fetchall()
        finally:
            self._recorder.current[self._label] += perf_counter_ns() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


class _TimedConn:
    def __init__(self, conn: Any, recorder: _Recorder) -> None:
        self._conn, self._recorder = conn, recorder

    def execute(self, sql: str, params: Any = ()) -> Any:
        label = _label(sql)
        t0 = perf_counter_ns()
        cursor = self._conn.execute(sql, params)
        self._recorder.add(label, perf_counter_ns() - t0)
        return _TimedCursor(cursor, self._recorder, label)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _wrap(obj: Any, attr: str, recorder: _Recorder, label: str) -> None:
    original = getattr(obj, attr)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            recorder.add(label, perf_counter_ns() - t0)

    setattr(obj, attr, timed)


class _TimedCrypto:
    """The store's `Crypto` with its per-value operations timed (it has slots: it cannot be patched in place)."""

    def __init__(self, crypto: Any, recorder: _Recorder) -> None:
        self._crypto, self._recorder = crypto, recorder

    def _timed(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            self._recorder.add(label, perf_counter_ns() - t0)

    def encrypt(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("crypto: encrypt (AES-GCM, Secret)", self._crypto.encrypt, *args, **kwargs)

    def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("crypto: decrypt (AES-GCM, Secret)", self._crypto.decrypt, *args, **kwargs)

    def fingerprint(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("crypto: fingerprint (HMAC)", self._crypto.fingerprint, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._crypto, name)


def _instrument(store: Any, recorder: _Recorder, calls: tuple[str, ...]) -> None:
    """Time every statement, the crypto, the recovery listing and liveness; group them under `calls`."""
    real_conn = store._conn
    store._conn = lambda: _TimedConn(real_conn(), recorder)
    store._crypto = _TimedCrypto(store._crypto, recorder)
    _wrap(store.recovery, "entries", recorder, "recovery.entries (stat; listing if changed)")
    if store.liveness is not None:
        for attr in ("hold", "alive"):
            _wrap(store.liveness, attr, recorder, f"liveness.{attr}")
    for call in calls:
        original = getattr(store, call)

        def make(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
            def called(*args: Any, **kwargs: Any) -> Any:
                with recorder.calling(name):
                    return fn(*args, **kwargs)

            return called

        setattr(store, call, make(original, call))


def _summary(recorder: _Recorder, title: str) -> list[str]:
    lines = [title]
    for call, samples in recorder.per_call.items():
        counts = recorder.statements[call]
        labels = sorted({k for s in samples for k in s}, key=lambda k: (k == "(whole call)", k))
        whole = statistics.median(s["(whole call)"] for s in samples)
        statements = statistics.median(counts)
        lines.append(f"  {call}: {len(samples)} calls, {statements:.0f} SQL statements per call (median), "
                     f"whole call median {format_value(whole, 'ns')}")  # fmt: skip
        accounted = 0.0
        for label in labels:
            if label == "(whole call)":
                continue
            values = [s.get(label, 0) for s in samples]
            median = statistics.median(values)
            accounted += statistics.mean(values)
            share = sum(s.get(label, 0) for s in samples) / sum(s["(whole call)"] for s in samples)
            lines.append(f"    {format_value(median, 'ns'):>10}  {share:6.1%}  {label}")
        rest = statistics.mean(s["(whole call)"] for s in samples) - accounted
        lines.append(f"    {format_value(rest, 'ns'):>10}  (mean) the rest: Python in the store, transaction setup")
    return lines


def profile_refreshes(refreshes: int, directory: Path) -> list[str]:
    from grantkeeper import Keeper
    from grantkeeper.testing.simulator import ProviderSimulator
    from grantkeeper.tokens import transport

    recorder = _Recorder()
    flow: dict[str, list[int]] = defaultdict(list)
    with ProviderSimulator() as sim:
        keeper = Keeper.open(f"sqlite://{directory / 'refresh.db'}")
        try:
            keeper.add_provider(sim_provider(sim))
            keeper.import_grant("bench", provider="sim", refresh_token=sim.issue_grant())
            for _ in range(20):  # warm: connections, statement cache, liveness file
                keeper.refresh("bench", force=True)
            _instrument(keeper.store, recorder, ("claim", "commit", "get_grant_and_provider"))
            original_send = transport.send
            sent: list[int] = []

            def timed_send(*args: Any, **kwargs: Any) -> Any:
                t0 = perf_counter_ns()
                try:
                    return original_send(*args, **kwargs)
                finally:
                    sent.append(perf_counter_ns() - t0)

            transport.send = timed_send  # type: ignore[assignment]
            try:
                for _ in range(refreshes):
                    before = {k: len(v) for k, v in recorder.per_call.items()}
                    t0 = perf_counter_ns()
                    keeper.refresh("bench", force=True)
                    total = perf_counter_ns() - t0
                    store_ns = sum(v[-1]["(whole call)"] for k, v in recorder.per_call.items()
                                   if len(v) > before.get(k, 0))  # fmt: skip
                    flow["total"].append(total)
                    flow["store calls"].append(store_ns)
                    flow["transport.send"].append(sent[-1])
                    flow["the rest (flow, request building, parse, cache)"].append(total - store_ns - sent[-1])
            finally:
                transport.send = original_send  # type: ignore[assignment]
        finally:
            keeper.close()
    lines = _summary(recorder, f"forced refreshes on SQLite ({refreshes}, after 20 warm-up):")
    lines.append("  one refresh, medians:")
    for label, values in flow.items():
        lines.append(f"    {format_value(statistics.median(values), 'ns'):>10}  {label}")
    return lines


def profile_cold_reads(grants: int, reads: int, directory: Path) -> list[str]:
    """Cold `access_token` reads: a keeper that never saw the grant reads it (valid access token) from a store of
    `grants` grants, loaded as `bench_scale` loads them (its own row maker and bulk insert)."""
    from benchmarks import bench_scale
    from grantkeeper import Keeper, Provider, Secret

    path = directory / "cold.db"
    now = time.time()
    os.environ[bench_scale.KEY_ENV] = bench_scale.KEY
    keeper = Keeper.open(f"sqlite://{path}")
    recorder = _Recorder()
    try:
        keeper.add_provider(Provider(name=bench_scale.PROVIDER, token_url="http://127.0.0.1:9/token",
                                     client_id="c", client_secret=Secret("s")))  # fmt: skip
        loader = bench_scale._SQLite(path)
        candidates: list[str] = []
        try:
            workers = min(os.cpu_count() or 1, 4) if grants >= 100_000 else 1
            for rows in bench_scale._row_chunks(grants, now, workers):
                loader.insert_chunk(rows)
                candidates += [row[0] for row in rows if row[6] > now + bench_scale.COLD_MARGIN]
        finally:
            loader.close()
        keeper.access_token(candidates[0])  # warm: connection, provider
        _instrument(keeper.store, recorder, ("get_grant_and_provider",))
        chosen = [candidates[int.from_bytes(secrets.token_bytes(4), "big") % len(candidates)] for _ in range(reads)]
        whole: list[int] = []
        for name in chosen:
            keeper._cache.pop(name, None)
            t0 = perf_counter_ns()
            keeper.access_token(name)
            whole.append(perf_counter_ns() - t0)
    finally:
        keeper.close()
    lines = _summary(recorder, f"cold access_token reads on SQLite ({reads} of {grants:,} grants):")
    lines.append(f"  access_token whole, median {format_value(statistics.median(whole), 'ns')}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer refreshes and reads, smaller store")
    parser.add_argument("--grants", type=int, default=None, help="grants in the cold-read store (default 100,000)")
    parser.add_argument("--only", choices=("refresh", "cold"), default=None)
    args = parser.parse_args(argv)
    refreshes, reads, grants = (40, 200, 5_000) if args.quick else (300, 2_000, 100_000)
    grants = args.grants or grants
    env = environment()
    print(f"profile_sqlite: Python {env['python']} on {env['platform']}, {env['cpus']} CPUs, load {env['loadavg']}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="grantkeeper-profile-") as tmp:
        if args.only in (None, "refresh"):
            print("\n".join(profile_refreshes(refreshes, Path(tmp))))
        if args.only in (None, "cold"):
            print("\n".join(profile_cold_reads(grants, reads, Path(tmp))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
