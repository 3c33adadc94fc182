"""Memory: the peak resident set size of a process holding N grants' cached access tokens (N = 100,000).

One fresh "spawn" process per library (`benchmarks.peers._workers.hold_grants`); each reads its RSS once the
library is imported, holds the N grants the way an application using the library does, and reports its peak
RSS (``VmHWM``):

* bare: a dict of name -> (access token, expiry), the least any cache can hold;
* grantkeeper: one `Keeper` whose in-process cache holds N access tokens: ``access_token(name)`` for N grants
  of an SQLite store loaded with valid (encrypted) tokens by `benchmarks.bench_scale.make_rows`; each call
  reads the grant once and caches the token;
* Authlib and requests-oauthlib: one ``OAuth2Session`` per grant (the unit that holds a token in both), each
  holding a token dict of the shape the library keeps after a refresh.

Tokens everywhere are 43-character random strings, as the simulator issues them.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import sim_provider
from benchmarks.bench_scale import CHUNK, KEY, PROVIDER, RECOVERY_ENV, _environ, _SQLite, make_rows
from benchmarks.peers import LIBRARIES
from benchmarks.peers._workers import DICT, hold_grants
from grantkeeper import Keeper
from grantkeeper.keys import KEY_ENV
from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["FULL", "QUICK", "Memory", "measure"]

FULL = 100_000
QUICK = 2_000
VALID_FOR = 3600.0  # every loaded access token stays valid this long past the load


@dataclass
class Memory:
    library: str
    grants: int
    before_kib: int  # RSS with the library imported, nothing held
    peak_kib: int


def measure(count: int) -> list[Memory]:
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-peers-") as tmp,
        _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(Path(tmp) / "recovery")}),
    ):
        url = _load_grantkeeper_store(Path(tmp) / "memory.db", count)
        ctx = multiprocessing.get_context("spawn")
        for lib in (DICT, *LIBRARIES):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=hold_grants, args=(lib, url, count, sender))
            proc.start()
            sender.close()
            try:
                if not receiver.poll(600):
                    raise RuntimeError(f"memory ({lib}): the holding process did not report")
                report: dict[str, Any] = receiver.recv()
            except EOFError:
                proc.join(timeout=60)
                raise RuntimeError(f"memory ({lib}): the holding process died (exit {proc.exitcode})") from None
            finally:
                proc.join(timeout=60)
                receiver.close()
            if report["held"] != count:
                raise RuntimeError(f"memory ({lib}): held {report['held']} grants, not {count}")
            results.append(Memory(lib, count, report["before_kib"], report["peak_kib"]))
    return results


def _load_grantkeeper_store(path: Path, count: int) -> str:
    """An SQLite store holding `count` grants (``bulk-0000000`` ...) with access tokens valid for an hour."""
    url = f"sqlite://{path}"
    with ProviderSimulator() as sim, Keeper.open(url) as keeper:
        keeper.add_provider(sim_provider(sim, PROVIDER))
    backend = _SQLite(path)
    try:
        for start in range(0, count, CHUNK):
            backend.insert_chunk(make_rows((KEY, start, min(count, start + CHUNK), time.time())))
    finally:
        backend.close()
    # make_rows lets 1 grant in 100 expire within minutes (for bench_scale's due query); here every token must
    # stay valid while the holding process reads it, so none would need the (stopped) simulator.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE grants SET expires_at = ?", (time.time() + VALID_FOR,))
    return url
