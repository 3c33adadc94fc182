"""Processes that play separate hosts against one PostgreSQL store (used by tests/system/test_multihost.py).

A "host" is one process with its own Keeper (own worker id, own in-process cache, own LISTEN connection) and its
own local recovery directory ($GRANTKEEPER_RECOVERY_DIR): hosts share the database and nothing else.

* `hammer_host` is a multiprocessing ('spawn') target: threads call ``access_token`` until told to stop and
  check every token served at the simulator's resource server; it reports counts, never tokens.
* ``python -m tests.multihost_workers refresh '<json>'`` runs one refresh in a fresh process and prints its
  outcome as JSON (the crash tests start it with ``GRANTKEEPER_FAILPOINTS`` to SIGKILL it at a named point).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx

from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
from tests.helpers import FAST_POLICY
from tests.workers import check_resource

RECOVERY_ENV = "GRANTKEEPER_RECOVERY_DIR"


class _RecoverySaves(logging.Handler):
    """Counts the refreshes whose commit failed and whose successor went to local recovery storage."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.saved = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "local recovery storage" in record.getMessage() and "could not be written" in record.getMessage():
            with self._guard:
                self.saved += 1


class _Tally:
    """What one host's threads saw: counts, when each error code was first and last seen, resource rejections."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first_error: dict[str, float] = {}
        self.last_error: dict[str, float] = {}
        self.rejected: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def merge(self, local: Counter[str], errors: list[tuple[str, float]]) -> None:
        with self._lock:
            self.counts.update(local)
            for code, at in errors:
                self.first_error[code] = min(at, self.first_error.get(code, at))
                self.last_error[code] = max(at, self.last_error.get(code, at))


def hammer_host(
    url: str,
    host: str,
    recovery_dir: str,
    grants: list[str],
    threads: int,
    resource_url: str,
    go: Any,
    stop: Any,
    ready: Any,
    results: Any,
    policy: dict[str, Any] | None = None,
) -> None:
    """One host: open a Keeper with this host's recovery dir, say ready, wait for `go`, then call
    ``access_token`` on `grants` from `threads` threads until `stop` is set. Every token served is presented
    to the resource server. Errors are counted by code (with first/last wall time), never raised. `policy`:
    RefreshPolicy arguments (default: tests.helpers.FAST_POLICY)."""
    os.environ[RECOVERY_ENV] = recovery_dir
    saves = _RecoverySaves()
    logging.getLogger("grantkeeper").addHandler(saves)
    tally = _Tally()
    refresh_policy = RefreshPolicy(**policy) if policy else FAST_POLICY
    keeper = Keeper.open(url, policy=refresh_policy, worker=f"{host}:{os.getpid()}")
    with keeper:
        ready.put({"host": host, "worker": keeper.worker})
        go.wait(300)
        workers = [
            threading.Thread(target=_caller, args=(keeper, grants, n, resource_url, stop, tally), name=f"{host}-{n}")
            for n in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        pending = len(keeper.store.recovery.entries())
        worker = keeper.worker
    results.put({
        "host": host,
        "worker": worker,
        "counts": dict(tally.counts),
        "first_error": tally.first_error,
        "last_error": tally.last_error,
        "recovery_saved": saves.saved,
        "recovery_pending_at_exit": pending,
        "rejected": tally.rejected[:20],
    })  # fmt: skip


def _caller(keeper: Keeper, grants: list[str], index: int, resource_url: str, stop: Any, tally: _Tally) -> None:
    """One thread: ``access_token`` round the grants from `index`, each token presented to the resource."""
    local: Counter[str] = Counter()
    errors: list[tuple[str, float]] = []
    with httpx.Client(trust_env=False, timeout=30) as http:
        i = index
        while not stop.is_set():
            name = grants[i % len(grants)]
            i += 1
            try:
                token = keeper.access_token(name)
            except GrantkeeperError as exc:
                local[f"error:{exc.code}"] += 1
                errors.append((exc.code, time.time()))
                stop.wait(0.02)  # a caller backs off a little before asking again
                continue
            except Exception as exc:  # an untyped error escaping the keeper is a bug (I5/I7)
                local[f"crash:{type(exc).__name__}"] += 1
                errors.append((f"crash:{type(exc).__name__}", time.time()))
                continue
            served_at = time.time()
            entry = keeper._cache.get(name)  # diagnostics only: the ServedToken cached
            local["calls"] += 1
            try:
                outcome = check_resource(keeper, http, name, token, resource_url, time.monotonic())
            except httpx.HTTPError:
                outcome = "resource_unreachable"
            local[outcome] += 1
            if outcome == "resource_rejected":
                known = entry if entry is not None and entry.access_token.reveal() == token else None
                tally.rejected.append({
                    "grant": name,
                    "generation": known.generation if known else None,
                    "serve_until_minus_served_at": round(known.serve_until - served_at, 3) if known else None,
                    "checked_after": round(time.time() - served_at, 3),
                    "served_at": served_at,
                })  # fmt: skip
    tally.merge(local, errors)


def refresh_once(config: dict[str, Any]) -> dict[str, Any]:
    """One refresh of ``config["grant"]`` as worker ``config["worker"]``; the outcome as plain data."""
    policy = RefreshPolicy(
        lease_ttl=float(config.get("lease_ttl", 1.5)),
        request_timeout=float(config.get("request_timeout", 0.25)),
        wait_timeout=30.0,
        deadline=10.0,
        adopt_after=float(config.get("adopt_after", RefreshPolicy().adopt_after)),
    )
    with Keeper.open(config["url"], policy=policy, worker=config["worker"]) as keeper:
        try:
            grant = keeper.refresh(config["grant"], force=bool(config.get("force", False)))
        except GrantkeeperError as exc:
            return {"error": exc.code, "attempt_id": exc.attempt_id, "worker": exc.worker}
        return {"generation": grant.generation}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "refresh":
        sys.exit("usage: python -m tests.multihost_workers refresh '<json config>'")
    print(json.dumps(refresh_once(json.loads(sys.argv[2]))), flush=True)
