"""Multi-host proofs on PostgreSQL (I1, I2, I4): hosts share one database and nothing else.

A host here is a process (or, where noted, a Keeper in this process) with its own worker id, its own in-process
cache, its own LISTEN connection and its own local recovery directory ($GRANTKEEPER_RECOVERY_DIR), because real
hosts do not share local disks. No test asserts a duration: waits are conditions with generous deadlines.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from grantkeeper import AttemptState, GrantkeeperError, GrantState, Keeper, LeaseTimeout, StoreUnavailable
from grantkeeper import _failpoints as failpoints
from grantkeeper.model import Attempt, Grant
from grantkeeper.stores import SQLStore, open_store
from grantkeeper.testing.simulator import Delay
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, add_grant, resource_ok
from tests.multihost_workers import RECOVERY_ENV, hammer_host
from tests.pg_server import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

Sim = Callable[..., Any]
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
LEASE_TTL = 1.5  # short, so a recovering host waits little for a dead holder's lease
DEADLINE = 120.0  # for conditions that normally hold within a second or two


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def pg_hosts(pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh, migrated database on the session server; $GRANTKEEPER_KEY set (the same key on every host)."""
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv(RECOVERY_ENV, str(host_dir(tmp_path, "observer")))
    open_store(pg_url, migrate=True).close()
    return pg_url


def host_dir(tmp_path: Path, host: str) -> Path:
    """The local disk of `host`: its own recovery directory."""
    path = tmp_path / "hosts" / host / "recovery"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pending_files(tmp_path: Path, host: str) -> list[Path]:
    """Successor token sets waiting in `host`'s local recovery storage."""
    return sorted(host_dir(tmp_path, host).rglob("*.gkr"))


def open_host(url: str, tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Keeper:
    """A Keeper in this process acting as `host` (the recovery dir is read when the store opens)."""
    monkeypatch.setenv(RECOVERY_ENV, str(host_dir(tmp_path, host)))
    options.setdefault("policy", FAST_POLICY)
    options.setdefault("worker", f"{host}:{os.getpid()}")
    return Keeper.open(url, **options)


def until(condition: Callable[[], bool], what: str, *, timeout: float = DEADLINE, every: float = 0.02) -> None:
    """Wait for `condition` (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(every)


def through_outage(fn: Callable[[], T], *, timeout: float = DEADLINE) -> T:
    """Call `fn`, retrying while the store is (still) unavailable: pooled connections broken by a server crash
    fail once each after the restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_host(url: str, tmp_path: Path, host: str, *, failpoint: str | None = None, **config: Any) -> dict[str, Any]:
    """Run one refresh in a fresh process on `host`; SIGKILLed at `failpoint` if given."""
    env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    env[RECOVERY_ENV] = str(host_dir(tmp_path, host))
    if failpoint:
        env["GRANTKEEPER_FAILPOINTS"] = f"{failpoint}=kill"
    config = {"url": url, "grant": "g", "worker": f"{host}:child", "lease_ttl": LEASE_TTL, **config}
    result = subprocess.run(
        [sys.executable, "-m", "tests.multihost_workers", "refresh", json.dumps(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if failpoint:
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout, result.stderr[-3000:])
        return {}
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def observe(url: str) -> SQLStore:
    """A store handle for reading evidence (it never claims or replays, so its recovery dir plays no part)."""
    return open_store(url)


def reap(procs: list[Any]) -> None:
    """Every started process is joined; one that does not exit is killed and then joined."""
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
            p.join(timeout=30)


@dataclass
class Hosts:
    """Host processes started by `running_hosts`; `reports` is filled when they stop."""

    procs: list[Any]
    go: Any
    stop: Any
    workers: dict[str, str]
    reports: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def running_hosts(
    url: str,
    tmp_path: Path,
    hosts: list[str],
    *,
    grants: list[str],
    threads: int,
    resource_url: str,
    policy: dict[str, Any] | None = None,
) -> Iterator[Hosts]:
    """One spawned process per host, each with its own recovery dir; yields once every host has opened its store
    (they start calling on `go`). On exit, whatever happened: stop them, collect their reports, reap them all."""
    ctx = multiprocessing.get_context("spawn")
    go, stop = ctx.Event(), ctx.Event()
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=hammer_host,
            args=(url, host, str(host_dir(tmp_path, host)), grants, threads, resource_url, go, stop, ready, results,
                  policy),
            name=f"host-{host}",
        )
        for host in hosts
    ]  # fmt: skip
    running = Hosts(procs, go, stop, {})
    try:
        for p in procs:
            p.start()
        for _ in hosts:
            note = ready.get(timeout=DEADLINE)
            running.workers[note["host"]] = note["worker"]
        yield running
    finally:
        stop.set()
        go.set()
        try:
            while len(running.reports) < sum(p.pid is not None for p in procs):
                running.reports.append(results.get(timeout=DEADLINE))
        except queue.Empty:
            pass  # a host died without reporting: the exit codes below say so
        finally:
            reap(procs)


def exited_cleanly(running: Hosts) -> list[dict[str, Any]]:
    assert [p.exitcode for p in running.procs] == [0] * len(running.procs)
    assert len(running.reports) == len(running.procs)
    return running.reports


def totals(reports: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in reports:
        total.update(r["counts"])
    return total


# ------------------------------------------------------------------------------- 1. hosts hammering grants


def test_four_hosts_share_two_grants_with_one_call_per_generation(pg_hosts: str, tmp_path: Path, make_sim: Sim) -> None:
    """4 hosts x 4 threads on 2 grants with 1 s tokens: provider calls == generations advanced, no invalid_grant,
    every served token works, no worker errors."""
    sim = make_sim(access_ttl=1.0, rotation="always", reuse_detection=True, reuse_grace=0)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim, grant="a")
        setup.import_grant("b", provider="sim", refresh_token=str(sim.issue_grant()))
    hosts = ["h1", "h2", "h3", "h4"]
    with running_hosts(
        pg_hosts, tmp_path, hosts, grants=["a", "b"], threads=4, resource_url=sim.base_url + "/resource"
    ) as running:
        assert len(set(running.workers.values())) == len(hosts)
        running.go.set()
        time.sleep(4.0)  # the length of the run, not an assertion
    reports = exited_cleanly(running)
    store = observe(pg_hosts)
    try:
        grants = {n: store.get_grant(n) for n in ("a", "b")}
    finally:
        store.close()
    advanced = sum(g.generation - 1 for g in grants.values())
    stats = sim.stats
    total = totals(reports)
    print(f"\n[multihost-1] calls={stats.refresh_calls} generations_advanced={advanced} "
          f"per_grant={ {n: g.generation - 1 for n, g in grants.items()} } totals={dict(total)} "
          f"sim={stats.as_dict()}")  # fmt: skip
    assert stats.errors.get("invalid_grant", 0) == 0, stats
    assert stats.reuse_detections == 0
    assert not [k for k in total if k.startswith(("error:", "crash:"))], total
    assert total["resource_rejected"] == 0 and total["resource_unreachable"] == 0, total
    assert total["calls"] > 0 and total["resource_ok"] == total["calls"]
    assert all(r["counts"].get("calls", 0) > 0 for r in reports), reports  # every host took part
    assert advanced > 2
    assert stats.refresh_calls == advanced, (stats, advanced)
    for g in grants.values():
        assert g.state is GrantState.ACTIVE
        assert g.refresh_token is not None and sim.is_active(g.refresh_token.reveal())
    assert not any(pending_files(tmp_path, h) for h in hosts)


# ------------------------------------------------------------------------- 2. SIGKILL of the lease holder


@pytest.mark.parametrize("point", ["after_claim", "before_send"])
def test_holder_killed_before_send_another_host_refreshes(
    pg_hosts: str, tmp_path: Path, make_sim: Sim, point: str
) -> None:
    """Holder killed before its request left: a process on another host re-sends the recorded attempt once and
    commits generation 2, then refreshes once more with the successor (a re-send's access token is not served on
    trust) and commits generation 3."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim)
    run_host(pg_hosts, tmp_path, "crashed", failpoint=point, force=True)
    assert sim.stats.refresh_calls == 0
    store = observe(pg_hosts)
    try:
        crashed = store.list_attempts("g")[0]
        assert crashed.worker == "crashed:child" and crashed.state is AttemptState.OPEN
        assert run_host(pg_hosts, tmp_path, "rescuer", adopt_after=0) == {"generation": 3}
        verify, resend, old = store.list_attempts("g")[:3]
        grant = store.get_grant("g")
    finally:
        store.close()
    assert old.id == crashed.id and old.state is AttemptState.ABANDONED
    assert resend.resend_of == crashed.id and resend.state is AttemptState.COMMITTED
    assert resend.worker == "rescuer:child" and verify.worker == "rescuer:child" and verify.resend_of is None
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())
    assert sim.stats.refresh_calls == 2 and sim.stats.errors == {}
    assert not pending_files(tmp_path, "crashed") and not pending_files(tmp_path, "rescuer")


@pytest.mark.parametrize("point", ["after_send", "before_commit"])
def test_holder_killed_after_send_without_grace_is_lost_in_flight(
    pg_hosts: str, tmp_path: Path, make_sim: Sim, point: str
) -> None:
    """Holder killed after the provider rotated (no grace): another host's one re-send is refused and reported
    lost_in_flight naming the crashed attempt; the grant needs re-consent and nothing further is spent."""
    sim = make_sim(rotation="always", reuse_grace=0, reuse_detection=True)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim)
    run_host(pg_hosts, tmp_path, "crashed", failpoint=point, force=True)
    assert sim.stats.refresh_calls == 1
    store = observe(pg_hosts)
    try:
        crashed = store.list_attempts("g")[0]
        assert crashed.worker == "crashed:child" and crashed.state is AttemptState.OPEN
        outcome = run_host(pg_hosts, tmp_path, "rescuer", adopt_after=0)
        assert outcome == {"error": "lost_in_flight", "attempt_id": crashed.id, "worker": "rescuer:child"}
        grant = store.get_grant("g")
        assert grant.state is GrantState.NEEDS_REAUTH and "lost_in_flight" in (grant.last_error or "")
        assert sim.stats.refresh_calls == 2 and sim.stats.errors == {"invalid_grant": 1}
        # A third host does not spend anything: the dead grant is reported from the store.
        assert run_host(pg_hosts, tmp_path, "third", adopt_after=0)["error"] == "needs_reauth"
        assert sim.stats.refresh_calls == 2
    finally:
        store.close()


def test_holder_killed_after_commit_loses_nothing(pg_hosts: str, tmp_path: Path, make_sim: Sim) -> None:
    """Holder killed right after its commit: another host reads generation 2 with no provider call, and a
    forced refresh on a third host spends the new token normally once the dead holder's lease expires."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim)
    run_host(pg_hosts, tmp_path, "crashed", failpoint="after_commit", force=True)
    assert sim.stats.refresh_calls == 1
    assert run_host(pg_hosts, tmp_path, "rescuer", adopt_after=0) == {"generation": 2}
    assert sim.stats.refresh_calls == 1
    assert run_host(pg_hosts, tmp_path, "third", adopt_after=0, force=True) == {"generation": 3}
    assert sim.stats.refresh_calls == 2 and sim.stats.errors == {}
    store = observe(pg_hosts)
    try:
        grant = store.get_grant("g")
    finally:
        store.close()
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())


def test_holder_killed_after_send_inside_grace_another_host_recovers(
    pg_hosts: str, tmp_path: Path, make_sim: Sim
) -> None:
    """Holder killed after sending, inside a 30 s reuse grace: another host re-sends at once (no adoption delay
    is needed inside the grace, so the default adopt_after is kept), commits the provider's replay, and refreshes
    once more with the successor for an access token that is not a replay."""
    sim = make_sim(rotation="always", reuse_grace=30, reuse_detection=True)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim, grace=30)
    run_host(pg_hosts, tmp_path, "crashed", failpoint="after_send", force=True)
    assert run_host(pg_hosts, tmp_path, "rescuer") == {"generation": 3}
    store = observe(pg_hosts)
    try:
        grant = store.get_grant("g")
    finally:
        store.close()
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())
    stats = sim.stats
    assert stats.refresh_calls == 3 and stats.grace_replays == 1 and stats.errors == {}


# ------------------------------------------------------------------------------------ 3. adoption delay


def test_possibly_spent_attempt_of_another_host_waits_for_adopt_after(
    pg_hosts: str, tmp_path: Path, make_sim: Sim
) -> None:
    """Another host finds a killed holder's possibly spent attempt (rotation, no grace): with the default
    adopt_after it refuses to re-send (lease_timeout naming that attempt, no provider call); with adopt_after=0
    it re-sends once and reports lost_in_flight."""
    sim = make_sim(rotation="always", reuse_grace=0, reuse_detection=True)
    with Keeper.open(pg_hosts) as setup:
        add_grant(setup, sim)
    run_host(pg_hosts, tmp_path, "crashed", failpoint="after_send", force=True)
    store = observe(pg_hosts)
    try:
        crashed = store.list_attempts("g")[0]
        waiting = run_host(pg_hosts, tmp_path, "patient")  # default adopt_after: 60 s
        assert waiting == {"error": "lease_timeout", "attempt_id": crashed.id, "worker": crashed.worker}
        assert sim.stats.refresh_calls == 1
        deferred = store.list_attempts("g")[0]
        assert deferred.worker == "patient:child" and deferred.state is AttemptState.NOT_SENT
        assert store.get_grant("g").state is GrantState.ACTIVE
        assert store.lease_holder("g", now=time.time()) is None  # the deferring host released its lease
        outcome = run_host(pg_hosts, tmp_path, "eager", adopt_after=0)
        assert outcome == {"error": "lost_in_flight", "attempt_id": crashed.id, "worker": "eager:child"}
        assert sim.stats.refresh_calls == 2
        assert store.get_grant("g").state is GrantState.NEEDS_REAUTH
    finally:
        store.close()


# -------------------------------------------------------------------- 4. server crash in the middle of a run


#: Long enough for a deliberately slowed token request (see below) to stay far from the request timeout.
OUTAGE_POLICY = {"lease_ttl": 7.0, "request_timeout": 3.0, "wait_timeout": 30.0, "backoff_base": 0.01,
                 "backoff_cap": 0.05, "deadline": 10.0}  # fmt: skip


@pytest.mark.parametrize("outage", [2.0, 7.0], ids=["down-2s", "down-7s-beyond-pool-timeout"])
def test_server_crash_and_restart_mid_run_loses_nothing(
    pg_restartable: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim, outage: float
) -> None:
    """pg_ctl stop -m immediate (while a refresh is in flight) and restart while 3 hosts hammer a grant with 1 s
    tokens: afterwards the stored refresh token is the provider's active one, no invalid_grant, one provider call
    per generation, only store_unavailable/lease_timeout errors, and no token the keeper deemed valid rejected."""
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv(RECOVERY_ENV, str(host_dir(tmp_path, "observer")))
    url = pg_restartable.create_database("gk_multihost")
    open_store(url, migrate=True).close()
    sim = make_sim(access_ttl=1.0, rotation="always", reuse_detection=True, reuse_grace=0)
    with Keeper.open(url) as setup:
        add_grant(setup, sim)
    hosts = ["h1", "h2", "h3"]

    def generation() -> int:
        store = open_store(url)
        try:
            return store.get_grant("g").generation
        finally:
            store.close()

    with running_hosts(
        url, tmp_path, hosts, grants=["g"], threads=3, resource_url=sim.base_url + "/resource", policy=OUTAGE_POLICY
    ) as running:
        running.go.set()
        until(lambda: generation() >= 4, "three refreshes before the crash", every=0.1)
        # Crash while a token request is in flight, so its holder's commit most likely finds the server gone.
        before = sim.stats.refresh_calls
        sim.inject(Delay(0.6))
        until(lambda: sim.stats.refresh_calls > before, "the next token request to arrive", every=0.005)
        crash_at = time.time()
        pg_restartable.stop_immediate()
        time.sleep(outage)  # the length of the outage, not an assertion
        pg_restartable.start_again()
        back_at = time.time()
        after_restart = through_outage(generation)
        until(lambda: through_outage(generation) >= after_restart + 3, "three refreshes after the restart", every=0.1)
        until(lambda: not any(pending_files(tmp_path, h) for h in hosts),
              "every successor kept during the outage committed by its host")  # fmt: skip
    reports = exited_cleanly(running)
    pending_at_exit = sum(r["recovery_pending_at_exit"] for r in reports)
    if pending_at_exit:  # a host stopped right after a failed commit: its next start commits the successor
        _reopen_hosts(url, tmp_path, hosts, monkeypatch)
    grant, attempts = _grant_and_attempts(url)
    stats = sim.stats
    total = totals(reports)
    advanced = grant.generation - 1
    recovered = sum(a.state is AttemptState.RECOVERED for a in attempts)
    errors = {k: v for k, v in total.items() if k.startswith(("error:", "crash:"))}
    window = {
        r["host"]: {k: (round(v - crash_at, 2), round(r["last_error"][k] - crash_at, 2))
                    for k, v in r["first_error"].items()}
        for r in reports
    }  # fmt: skip
    print(
        f"\n[multihost-4 outage={outage}s] calls={stats.refresh_calls} generations_advanced={advanced} errors={errors} "
        f"outage=0..{back_at - crash_at:.2f}s error_window_rel_crash={window} "
        f"recovery_saved={sum(r['recovery_saved'] for r in reports)} recovered_commits={recovered} "
        f"pending_at_exit={pending_at_exit} totals={dict(total)} sim={stats.as_dict()} "
        f"rejected={[(r['host'], x) for r in reports for x in r['rejected']]}"
    )
    assert stats.errors.get("invalid_grant", 0) == 0 and stats.reuse_detections == 0, stats
    assert set(errors) <= {"error:store_unavailable", "error:lease_timeout"}, errors
    assert total["calls"] > 0, total
    # Every token served was accepted by the resource server, outage or not (I4).
    rejected = [x | {"host": r["host"], "served_rel_crash": round(x["served_at"] - crash_at, 2)}
                for r in reports for x in r["rejected"]]  # fmt: skip
    assert rejected == [], rejected
    assert grant.state is GrantState.ACTIVE
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())
    assert not any(pending_files(tmp_path, h) for h in hosts)
    assert stats.refresh_calls == advanced, (stats, advanced, recovered)


def _reopen_hosts(url: str, tmp_path: Path, hosts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Open a keeper on each host, which commits any successor its recovery dir still holds."""
    for host in hosts:
        monkeypatch.setenv(RECOVERY_ENV, str(host_dir(tmp_path, host)))
        Keeper.open(url).close()


def _grant_and_attempts(url: str) -> tuple[Grant, list[Attempt]]:
    store = open_store(url)
    try:
        return store.get_grant("g"), store.list_attempts("g", limit=100_000)
    finally:
        store.close()


# ------------------------------------------------------------------------------ 5. store down at commit


def test_store_down_at_commit_keeps_successor_on_that_host(
    pg_restartable: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim
) -> None:
    """The server dies at commit: the caller gets a working token (the successor is in its host's recovery dir);
    no other host can spend the old token during the outage or after it; the next refresh on that host commits
    the successor without a provider call."""
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    url = pg_restartable.create_database("gk_commit_down")
    open_store(url, migrate=True).close()
    sim = make_sim(rotation="always", reuse_grace=0, reuse_detection=True)
    host_a = open_host(url, tmp_path, "a", monkeypatch)
    # A second process on host A: the same local disk, its own worker id and cache.
    other_on_a = open_host(url, tmp_path, "a", monkeypatch, worker="a:second-process")
    host_b = open_host(url, tmp_path, "b", monkeypatch)
    keepers = [host_a, other_on_a, host_b]
    try:
        add_grant(host_a, sim)
        failpoints.set_hook("before_commit", _crash_once(pg_restartable))
        token = host_a.access_token("g")
        assert resource_ok(sim, token)
        assert sim.stats.refresh_calls == 1
        assert len(pending_files(tmp_path, "a")) == 1 and not pending_files(tmp_path, "b")
        assert not pg_restartable.running

        # During the outage host B can neither read nor claim the grant, so it cannot spend the old token.
        with pytest.raises(StoreUnavailable):
            host_b.access_token("g")
        with pytest.raises(StoreUnavailable):
            host_b.refresh("g", force=True)
        assert sim.stats.refresh_calls == 1

        # The process that refreshed exits before the store is back: only host A's disk has the successor.
        host_a.close()
        keepers.remove(host_a)
        assert len(pending_files(tmp_path, "a")) == 1
        pg_restartable.start_again()
        held = _open_attempt(url)
        assert held.worker == host_a.worker

        # After the restart host B still does not spend it: that attempt's successor may exist on another host.
        with pytest.raises(LeaseTimeout) as waited:
            through_outage(lambda: host_b.access_token("g"))
        assert waited.value.attempt_id == held.id and waited.value.worker == host_a.worker
        assert sim.stats.refresh_calls == 1

        # The next refresh on host A commits the kept successor: no provider call.
        assert through_outage(lambda: other_on_a.access_token("g")) == token
        grant = through_outage(lambda: other_on_a.store.get_grant("g"))
        assert grant.generation == 2
        assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())
        assert not pending_files(tmp_path, "a")
        assert through_outage(lambda: host_b.access_token("g")) == token
        assert sim.stats.refresh_calls == 1 and sim.stats.errors == {}
        attempts = {a.id: a for a in through_outage(lambda: other_on_a.store.list_attempts("g"))}
        assert attempts[held.id].state is AttemptState.RECOVERED
    finally:
        failpoints.clear_hooks()
        if not pg_restartable.running:
            pg_restartable.start_again()
        for k in keepers:
            k.close()


def _crash_once(server: PostgresServer) -> Callable[[], None]:
    """A failpoint hook that stops the server at once (no shutdown checkpoint), the first time only."""

    def crash() -> None:
        failpoints.clear_hooks()
        server.stop_immediate()

    return crash


def _open_attempt(url: str) -> Attempt:
    """Once the server is back: the grant's latest attempt, still open, on generation 1 (nothing committed)."""
    store = through_outage(lambda: observe(url))
    try:
        held = through_outage(lambda: store.list_attempts("g"))[0]
        assert held.state is AttemptState.OPEN
        assert through_outage(lambda: store.get_grant("g")).generation == 1
    finally:
        store.close()
    return held


# --------------------------------------------------------------------------- 6. NOTIFY across hosts


def test_rejected_token_is_dropped_from_every_hosts_cache(
    pg_hosts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim
) -> None:
    """Host A reports a 401 for the access token both hosts cache: NOTIFY drops it from host B's cache, and B's
    next call refreshes once and serves a new, working token."""
    sim = make_sim(rotation="always", reuse_grace=0)
    host_a = open_host(pg_hosts, tmp_path, "a", monkeypatch)
    host_b = open_host(pg_hosts, tmp_path, "b", monkeypatch)
    try:
        assert host_a.worker != host_b.worker
        add_grant(host_a, sim)
        listening(host_b)
        first = host_a.access_token("g")
        assert host_b.access_token("g") == first
        assert sim.stats.refresh_calls == 1
        assert host_b.access_token("g") == first  # served from B's cache
        assert sim.stats.refresh_calls == 1

        assert host_a.report_rejected("g", first) is True
        served: list[str] = []

        def b_moved_on() -> bool:
            served.append(host_b.access_token("g"))
            return served[-1] != first

        until(b_moved_on, "host B to stop serving the rejected access token")
        second = served[-1]
        assert resource_ok(sim, second)
        assert sim.stats.refresh_calls == 2
        assert host_a.access_token("g") == second
        assert sim.stats.refresh_calls == 2 and sim.stats.errors == {}
    finally:
        host_a.close()
        host_b.close()


def test_waiter_on_another_host_is_woken_by_the_holders_commit(
    pg_hosts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim
) -> None:
    """Host B asks while host A holds the lease: B blocks, A's commit NOTIFY reaches B while it waits, and B
    gets A's token; the provider saw one call."""
    sim = make_sim(rotation="always", reuse_grace=0)
    host_a = open_host(pg_hosts, tmp_path, "a", monkeypatch)
    host_b = open_host(pg_hosts, tmp_path, "b", monkeypatch)
    try:
        add_grant(host_a, sim)
        listening(host_b)
        announced: list[tuple[str, int, str]] = []
        host_b.store.subscribe(lambda name, gen, kind: announced.append((name, gen, kind)))
        b_waiting = threading.Event()
        a_at_commit = threading.Event()
        waits: list[bool] = []  # per wait of B: had A's commit been announced to B when it returned?
        real_wait = host_b.store.wait_for_change

        def spy_wait(name: str, **kw: Any) -> None:
            b_waiting.set()
            real_wait(name, **kw)
            waits.append(("g", 2, "commit") in announced)

        monkeypatch.setattr(host_b.store, "wait_for_change", spy_wait)
        holder = threading.current_thread()
        a_tokens: list[str] = []

        def hold_until_b_waits() -> None:
            if threading.current_thread() is holder:
                return
            a_at_commit.set()
            b_waiting.wait(DEADLINE)

        failpoints.set_hook("before_commit", hold_until_b_waits)
        a_thread = threading.Thread(target=lambda: a_tokens.append(host_a.access_token("g")))
        a_thread.start()
        try:
            assert a_at_commit.wait(DEADLINE)
            lease = host_b.store.lease_holder("g", now=time.time())
            assert lease is not None and lease.worker == host_a.worker
            b_token = host_b.access_token("g")
        finally:
            b_waiting.set()
            a_thread.join(DEADLINE)
        assert not a_thread.is_alive()
        assert a_tokens == [b_token]
        assert resource_ok(sim, b_token)
        assert sim.stats.refresh_calls == 1
        assert waits, "host B never blocked on A's lease"
        assert ("g", 2, "commit") in announced
        # Not asserted: that a wait ended *because of* the notification. On a loaded machine A's commit can land
        # between two of B's capped waits, which is correct behaviour, so asserting it would be flaky.
    finally:
        failpoints.clear_hooks()
        host_a.close()
        host_b.close()


def listening(keeper: Keeper) -> None:
    """Wait until `keeper`'s store has its LISTEN connection, so no notification is sent before it listens."""
    listener = keeper.store._listener  # type: ignore[attr-defined]
    assert listener is not None
    until(listener.connected.is_set, "the LISTEN connection")


# ------------------------------------------------------------------------------- bugs found by the above


def test_token_is_not_served_past_its_expiry_after_a_commit_blocked_by_a_dead_store(
    pg_restartable: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim
) -> None:
    """I4: a refresh that outlived its own token (the store died at commit and the lease release then waited for
    the pool) must not hand that expired token out silently: the caller gets a working token or a clear error."""
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    url = pg_restartable.create_database("gk_stale_served")
    open_store(url, migrate=True).close()
    sim = make_sim(access_ttl=1.0, rotation="always", reuse_grace=0)
    host_a = open_host(url, tmp_path, "a", monkeypatch)
    try:
        add_grant(host_a, sim)
        failpoints.set_hook("before_commit", _crash_once(pg_restartable))
        try:
            token = host_a.access_token("g")
        except GrantkeeperError:
            return  # a clear error is a correct answer
        accepted = resource_ok(sim, token)
        assert accepted, "access_token returned a token that had already expired"
    finally:
        failpoints.clear_hooks()
        if not pg_restartable.running:
            pg_restartable.start_again()
        host_a.close()


def test_access_token_survives_another_hosts_commit_right_after_caching(
    pg_hosts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sim: Sim
) -> None:
    """A NOTIFY from another host's commit that lands between this host caching its new token and
    access_token reading it back must not turn into a KeyError: the caller gets a working token."""
    sim = make_sim(rotation="always", reuse_grace=0)
    host_a = open_host(pg_hosts, tmp_path, "a", monkeypatch)
    host_b = open_host(pg_hosts, tmp_path, "b", monkeypatch)
    try:
        add_grant(host_a, sim)
        listening(host_b)
        remember = host_b._remember
        fired: list[int] = []

        def remember_then_another_host_refreshes(result: Any, mark: int) -> Any:
            grant = remember(result, mark)
            if not fired:
                fired.append(grant.generation)
                host_a.refresh("g", force=True)  # e.g. a keep-alive job on host A, at just this moment
                until(lambda: "g" not in host_b._cache, "host B to drop its cached token on A's NOTIFY")
            return grant

        monkeypatch.setattr(host_b, "_remember", remember_then_another_host_refreshes)
        token = host_b.access_token("g")
        assert fired == [2]
        accepted = resource_ok(sim, token)
        assert accepted
        assert sim.stats.refresh_calls in (2, 3) and sim.stats.errors == {}
    finally:
        host_a.close()
        host_b.close()
