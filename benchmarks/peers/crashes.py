"""Crashes: refresh cycles with the refreshing worker SIGKILLed at a random moment in each.

Per library, a fresh `ProviderSimulator` (long-lived access tokens, rotation always, reuse grace 0, reuse
detection on) and store with one grant. Each cycle:

1. a worker process (`benchmarks.peers._workers.refresh_forever`, started from a "forkserver" that has the
   libraries imported, so a start costs milliseconds) opens the library, refreshes the grant once, says it
   is ready, and then refreshes in a loop, forced and persisted the library's way;
2. after a random delay from "ready", uniform in [0, `KILL_WINDOW` x the library's median refresh time], the parent
   SIGKILLs it: the kill lands at a random point of some refresh (before the request, while the provider
   answers, between the answer and the commit, during or after the commit);
3. the truth, once the simulator has answered every request the worker sent: the refresh token the
   library's store now holds either is still live at the simulator, or the provider had already rotated it
   and the successor died with the worker ("lost in flight");
4. recovery: the parent refreshes the grant once through a freshly opened client of the library (a new
   worker's first refresh, with nothing cached from earlier cycles).

* grants lost: recoveries that failed (the grant needs the user's consent again; the next cycle uses a new grant).
* wrong diagnoses: failed recoveries whose reported cause is not the true one: the token was lost in flight
  and the library reported something else (``invalid_grant`` reads as "revoked or expired"; grantkeeper's
  ``lost_in_flight`` names the crashed attempt), or the grant was healthy and the recovery failed anyway.
* unnoticed (in the details): recoveries that reported success although the grant's refresh token was dead.

grantkeeper's worker runs with a short lease (`WORKER_POLICY`) so a killed holder's lease expires quickly;
the recovering parent waits for it, as a second worker would.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.peers import library
from benchmarks.peers._workers import refresh_forever
from benchmarks.peers.base import SimInfo
from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["Crashes", "measure"]

KILL_WINDOW = 3.0  # the kill lands within this many median refresh times after the worker is ready
WORKER_POLICY = {"lease_ttl": 1.5, "request_timeout": 0.25, "wait_timeout": 30.0, "deadline": 10.0}
RECOVERY_POLICY = {"lease_ttl": 5.0, "request_timeout": 2.0, "wait_timeout": 30.0, "deadline": 20.0}
LOST_IN_FLIGHT = "lost_in_flight"
SETTLE = 0.1  # seconds without a new token request before the simulator counts as quiet
PRELOAD = [
    "benchmarks.peers._workers",
    "benchmarks.peers.grantkeeper_lib",
    "benchmarks.peers.authlib_lib",
    "benchmarks.peers.requests_oauthlib_lib",
]


@dataclass
class Crashes:
    library: str
    cycles: int
    lost_in_flight: int  # cycles where the kill lost the rotated token (the truth)
    grants_lost: int
    wrong_diagnoses: int
    unnoticed: int  # recoveries that reported success while the grant's refresh token was dead
    reported: dict[str, int]  # failed recoveries by the code the library reported
    refresh_ms: float  # the library's median uninterrupted refresh, which scales the kill window
    worker_failures: list[str] = field(default_factory=list)


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def measure(lib: str, cycles: int, seed: int) -> Crashes:
    # grantkeeper logs a warning for every risky re-send it makes after a crash (the diagnosis, as it happens);
    # the scenario counts the outcomes instead of printing 200 of them.
    logging.getLogger("grantkeeper").addHandler(logging.NullHandler())
    rng = random.Random(seed)
    ctx = _context()
    with (
        ProviderSimulator(rotation="always", reuse_grace=0, reuse_detection=True) as sim,
        tempfile.TemporaryDirectory(prefix="grantkeeper-bench-peers-") as tmp,
    ):
        adapter = library(lib)
        location = adapter.create(Path(tmp), sim)
        info = SimInfo.of(sim)
        # Each recovery is a new worker's first refresh: a fresh client, with nothing cached from earlier cycles.
        recovery = library(lib, grantkeeper_policy=RECOVERY_POLICY)
        grant = 0
        adapter.add_grant(location, f"crash-{grant}", sim.issue_grant())
        refresh_ms = _median_refresh_ms(recovery.client(location, info), f"crash-{grant}")
        reported: Counter[str] = Counter()
        truth_lost = lost = wrong = unnoticed = 0
        failures: list[str] = []
        for _ in range(cycles):
            name = f"crash-{grant}"
            failure = _kill_one(ctx, lib, location, info, name, rng.uniform(0, KILL_WINDOW * refresh_ms) / 1000)
            if failure:
                failures.append(failure)
            _settle(sim)
            stored = adapter.stored_refresh_token(location, name)
            in_flight = stored is None or not sim.is_active(stored)
            truth_lost += in_flight
            code = _recover(recovery.client(location, info), name)
            if code is None:
                unnoticed += in_flight and not sim.is_active(adapter.stored_refresh_token(location, name) or "")
                continue
            lost += 1
            reported[code] += 1
            wrong += not (in_flight and code == LOST_IN_FLIGHT)
            grant += 1  # the user consents again: a new grant for the next cycle
            adapter.add_grant(location, f"crash-{grant}", sim.issue_grant())
    return Crashes(lib, cycles, truth_lost, lost, wrong, unnoticed, dict(reported), refresh_ms, failures)


def _median_refresh_ms(client: Any, name: str) -> float:
    times = []
    try:
        for _ in range(7):
            t0 = time.perf_counter()
            client.refresh(name)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        client.close()
    return statistics.median(times)


def _kill_one(ctx: Any, lib: str, location: str, info: SimInfo, name: str, delay: float) -> str | None:
    """Start a refreshing worker, SIGKILL it `delay` seconds after it is ready; what it said if it failed."""
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=refresh_forever, args=(lib, location, info, name, WORKER_POLICY, sender))
    proc.start()
    sender.close()
    try:
        if not receiver.poll(60):
            raise RuntimeError(f"crashes ({lib}): a worker did not start")
        message = receiver.recv()
        if message != "ready":
            raise RuntimeError(f"crashes ({lib}): a worker's first refresh failed: {message}")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        try:
            return str(receiver.recv()) if receiver.poll(0) else None  # a failure it reported before the kill
        except EOFError:
            return None  # killed with nothing more to say: the usual case
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        receiver.close()


def _settle(sim: ProviderSimulator) -> None:
    """Wait until the simulator has finished every request the killed worker sent: a request that reached it
    is still answered (and may rotate the token) after the worker is gone. The counter goes up before a
    request is processed under the simulator's lock, and `stats` takes that lock, so a count unchanged for
    `SETTLE` seconds means nothing is in flight."""
    calls = sim.stats.refresh_calls
    while True:
        time.sleep(SETTLE)
        now = sim.stats.refresh_calls
        if now == calls:
            return
        calls = now


def _recover(client: Any, name: str) -> str | None:
    """One refresh through the library, as the next worker's; None if it worked, else the reported code."""
    try:
        client.refresh(name)
    except Exception as exc:
        return client.diagnose(exc)
    finally:
        client.close()
    return None
