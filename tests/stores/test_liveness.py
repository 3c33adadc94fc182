"""A dead lease holder is taken over at once; a live one is still waited for (DESIGN failure table, issue 17).

Processes are SIGKILLed at the named failpoints of the refresh (`grantkeeper._failpoints`), with the default
30 s lease, on SQLite (flock beside the store) and PostgreSQL (session advisory lock). The proof that the next
process did not wait for the dead lease is in what the store recorded: the re-send's start time against the
dead lease's expiry, never a wall-clock assertion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AttemptState, GrantState, Keeper, OutcomeClass, RefreshPolicy, RotationMode
from grantkeeper.model import LeaseHolder, Provider
from grantkeeper.protocol.policy import MIN_GRACE_REQUEST_TIMEOUT
from grantkeeper.stores import open_store
from grantkeeper.stores.liveness import FileLiveness
from tests.conftest import TEST_KEY
from tests.helpers import add_grant

Sim = Callable[..., Any]

LEASE_TTL = 30.0  # the default: waiting it out would be unmistakable in the recorded times
SENT = ["after_send", "before_commit"]  # the provider answered; nothing committed
NOT_SENT = ["after_claim", "before_send"]  # lease and attempt durable; nothing sent

# A holder process: refreshes grant "g" with the given lease and failpoints, prints the outcome as JSON.
CHILD = """
import json, sys
from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
policy = RefreshPolicy(lease_ttl=float(sys.argv[2]), request_timeout=5, wait_timeout=float(sys.argv[3]))
with Keeper.open(sys.argv[1], policy=policy) as keeper:
    try:
        grant = keeper.refresh("g", force=sys.argv[4] == "force")
        print(json.dumps({"generation": grant.generation}))
    except GrantkeeperError as exc:
        print(json.dumps({"error": exc.code, "attempt_id": exc.attempt_id}))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store of each kind; children inherit the key and a recovery directory through the environment."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/s.db"
    request.applymarker(pytest.mark.postgres)
    url: str = request.getfixturevalue("pg_url")
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    open_store(url, migrate=True).close()
    return url


def env(failpoints: str | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    return {**clean, "GRANTKEEPER_FAILPOINTS": failpoints} if failpoints else clean


def cli(url: str, *args: str, failpoints: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line in a new process, with the default policy (30 s lease)."""
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", url, *args], env=env(failpoints),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def child(url: str, *, lease_ttl: float = LEASE_TTL, wait: float = 60.0, force: bool = False,
          failpoints: str | None = None) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(lease_ttl), str(wait), "force" if force else "plain"],
        env=env(failpoints), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return dict(json.loads(out))


def held_lease(url: str) -> LeaseHolder:
    """The lease as the store holds it right now (it must be unexpired: that is the point)."""
    with Keeper.open(url) as keeper:
        holder = keeper.store.lease_holder("g", now=time.time())
    assert holder is not None, "the killed holder's lease should still be unexpired"
    return holder


def attempts(url: str) -> list[Any]:
    with Keeper.open(url) as keeper:
        return list(reversed(keeper.store.list_attempts("g")))


def resend_pair(url: str) -> tuple[Any, Any]:
    """(the attempt that may have spent the token, its re-send). A rotating provider's answer to a re-send is not
    served on trust: the attempt after the re-send is one more refresh with the successor, which this checks."""
    found = attempts(url)
    index = max(i for i, a in enumerate(found) if a.resend_of is not None)
    resend = found[index]
    after = found[index + 1 :]
    assert [(a.state, a.resend_of) for a in after] == [(AttemptState.COMMITTED, None)]
    return next(a for a in found if a.id == resend.resend_of), resend


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ the signal


HOLD = """
import sys, time
from grantkeeper.stores import open_store
store = open_store(sys.argv[1])
print(store.liveness.hold(sys.argv[2]), flush=True)
time.sleep(600)
"""


def test_a_worker_reads_alive_while_its_process_runs_and_dead_once_killed(store_url: str) -> None:
    """The signal itself, across processes: held while the holder runs (even stopped), free after SIGKILL."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, store_url, "w1"], env=env(), stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        key = holder.stdout.readline().strip()
        assert key
        with Keeper.open(store_url) as keeper:
            store = keeper.store
            assert store.liveness is not None and store.liveness.key_for("w1") == key
            assert store.worker_alive("w1") is True
            holder.send_signal(signal.SIGSTOP)  # stopped is alive: it may resume and commit
            assert store.worker_alive("w1") is True
            holder.kill()
            holder.wait(timeout=30)
            wait_for(lambda: store.worker_alive("w1") is False, "the killed worker's signal to be released")
            assert store.worker_alive("never-seen") in (None, False)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_file_signal_unknown_is_not_dead(tmp_path: Path) -> None:
    """No file (another mount, swept) or a key that is not ours: 'cannot tell', which never shortens a wait."""
    liveness = FileLiveness(tmp_path / "live")
    assert liveness.alive(None, liveness.key_for("ghost")) is None
    assert liveness.alive(None, "flock:../../etc/passwd") is None
    key = liveness.hold("me")
    assert key is not None and liveness.alive(None, key) is True
    other = FileLiveness(tmp_path / "live")
    assert other.hold("me") == key  # the same worker id twice (a custom id): both hold it, shared
    liveness.close()
    assert liveness.alive(None, key) is True  # the other holder still has it
    other.close()
    assert liveness.alive(None, key) is None  # a clean close removes the file: nothing left behind
    assert not list((tmp_path / "live").iterdir())


# ------------------------------------------------------------------------------------------------ takeover


def setup(url: str, sim: Any, *, grace: float) -> None:
    with Keeper.open(url) as keeper:
        add_grant(keeper, sim, grace=grace)


@pytest.mark.slow
@pytest.mark.parametrize("point", NOT_SENT + SENT)
def test_the_next_token_takes_over_a_killed_holders_lease_at_once(store_url: str, make_sim: Sim, point: str) -> None:
    """`grantkeeper refresh --force` SIGKILLed at each point of the refresh, holding a 30 s lease; the next
    `grantkeeper token` re-sends the open attempt long before that lease would have expired, and gets the
    successor (the provider's grace covers the re-send)."""
    sim = make_sim(rotation="always", reuse_grace=300)
    setup(store_url, sim, grace=300)  # a grace long enough to leave the default 30 s lease alone
    killed = cli(store_url, "refresh", "g", "--force", failpoints=f"{point}=kill")
    assert killed.returncode == -signal.SIGKILL
    dead = held_lease(store_url)
    assert dead.expires_at - time.time() > LEASE_TTL / 2  # still far from expiring
    token = cli(store_url, "token", "g")
    assert token.returncode == 0, token.stderr
    assert "took over the lease" in token.stderr
    crashed, resend = resend_pair(store_url)
    assert crashed.state is AttemptState.ABANDONED and resend.resend_of == crashed.id
    assert resend.state is AttemptState.COMMITTED and resend.worker != crashed.worker
    # The takeover did not wait for the lease: the re-send was recorded well before the dead lease's expiry.
    assert resend.started_at < dead.expires_at - LEASE_TTL / 2
    with Keeper.open(store_url) as keeper:
        grant = keeper.store.get_grant("g")
        assert keeper.store.lease_holder("g", now=time.time()) is None
    assert grant.generation == 3 and grant.access_token is not None  # the re-send's successor, then one more
    assert token.stdout.strip() == grant.access_token.reveal()
    assert sim.stats.errors == {}
    assert sim.stats.refresh_calls == (3 if point in SENT else 2)


@pytest.mark.slow
def test_a_waiting_process_takes_over_when_the_holder_dies_mid_wait(store_url: str, make_sim: Sim,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    """A process already waiting for a live holder (held after the provider answered) takes its lease over once
    the holder is SIGKILLed: the re-send is recorded long before the holder's 30 s lease would have expired."""
    sim = make_sim(rotation="always", reuse_grace=300)
    setup(store_url, sim, grace=300)
    holder = child(store_url, force=True, failpoints=f"after_send=wait:{tmp_path / 'never'}")
    wait_for(lambda: sim.stats.refresh_calls == 1, "the holder's request")
    lease = held_lease(store_url)
    waiter = child(store_url, force=False)
    wait_for(lambda: waiter.poll() is None and time.time() > lease.expires_at - LEASE_TTL + 1, "the waiter to wait")
    killed_at = time.time()
    holder.kill()
    holder.communicate(timeout=60)
    assert outcome(waiter) == {"generation": 3}  # the re-send's successor, then one more refresh with it
    first, resend = resend_pair(store_url)
    assert resend.resend_of == first.id and resend.state is AttemptState.COMMITTED
    assert resend.started_at - killed_at < LEASE_TTL / 3 and resend.started_at < lease.expires_at - LEASE_TTL / 2
    assert sim.stats.refresh_calls == 3 and sim.stats.errors == {}


@pytest.mark.slow
def test_a_stopped_holder_is_waited_for_not_double_spent(store_url: str, make_sim: Sim, tmp_path: Path) -> None:
    """A live holder that is merely stuck (SIGSTOP after the provider answered) keeps its lease: another process
    times out waiting instead of spending the token again; resumed, the holder commits."""
    sim = make_sim(rotation="always", reuse_grace=0)
    setup(store_url, sim, grace=0)
    gate = tmp_path / "go"
    holder = child(store_url, force=True, failpoints=f"after_send=wait:{gate}")
    try:
        wait_for(lambda: sim.stats.refresh_calls == 1, "the holder's request")
        holder.send_signal(signal.SIGSTOP)
        waiter = child(store_url, force=True, wait=3.0)
        assert outcome(waiter)["error"] == "lease_timeout"
        assert sim.stats.refresh_calls == 1  # not spent twice
        assert [a.resend_of for a in attempts(store_url)] == [None]  # no re-send was even recorded
        gate.touch()
        holder.send_signal(signal.SIGCONT)
        assert outcome(holder) == {"generation": 2}
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.wait()
    assert sim.stats.errors == {} and sim.stats.refresh_calls == 1


PID_CHILD = """
import sys
from grantkeeper import Keeper, RefreshPolicy
with Keeper.open(sys.argv[1], worker=sys.argv[2]) as keeper:
    keeper.refresh("g", force=True)
"""


@pytest.mark.slow
def test_doctor_asks_the_signal_not_the_pid_in_the_worker_id(tmp_path: Path, make_sim: Sim) -> None:
    """Containers sharing a host name: a live worker whose id names this host and a pid that does not exist in
    this pid table (it is another namespace's) is still refreshing, and doctor says so; killed, it is gone."""
    import socket

    sim = make_sim(rotation="always", reuse_grace=300)
    url = f"sqlite://{tmp_path}/s.db"
    setup(url, sim, grace=300)
    worker = f"{socket.gethostname()}:4194303:c0ffee"  # above the default pid_max: no such pid here
    holder = subprocess.Popen([sys.executable, "-c", PID_CHILD, url, worker],
                              env=env(f"after_send=wait:{tmp_path / 'never'}"))  # fmt: skip
    try:
        wait_for(lambda: sim.stats.refresh_calls == 1, "the holder's request")
        with Keeper.open(url) as keeper:
            diagnosis = keeper.doctor("g")
        assert any("being refreshed now" in fact for fact in diagnosis.facts), diagnosis.facts
    finally:
        holder.kill()
        holder.wait()
    with Keeper.open(url) as keeper:
        gone = keeper.doctor("g")
    assert gone.cause == "in_flight" and any("liveness signal was released" in fact for fact in gone.facts)


# ------------------------------------------------------------------------------------------------ reuse grace


def grace_provider(grace: float, rotation: RotationMode = RotationMode.ALWAYS) -> Provider:
    return Provider(name="p", token_url="https://as.example/token", client_id="c", rotation=rotation,
                    reuse_grace=grace)  # fmt: skip


def test_a_provider_grace_caps_the_lease_and_the_request_budget_inside_it() -> None:
    policy = RefreshPolicy()  # 30 s lease, 10 s requests
    okta = policy.for_provider(grace_provider(30))
    assert okta.lease_ttl == 15 and okta.request_timeout == 7
    assert okta.lease_ttl >= 2 * okta.request_timeout + 1  # a healthy request never outlives the lease
    assert policy.for_provider(grace_provider(0)) is policy  # no grace: nothing to fit inside
    assert policy.for_provider(grace_provider(30, RotationMode.NEVER)) is policy
    assert policy.for_provider(grace_provider(1800)) is policy  # already well inside
    tiny = policy.for_provider(grace_provider(4))  # too short for a lease: the floor, liveness does the rest
    assert tiny.request_timeout == MIN_GRACE_REQUEST_TIMEOUT and tiny.lease_ttl == 2 * MIN_GRACE_REQUEST_TIMEOUT + 1
    short = RefreshPolicy(lease_ttl=3, request_timeout=1)
    assert short.for_provider(grace_provider(30)) is short


def test_grace_surely_over_counts_from_the_first_send_plus_one_request_budget() -> None:
    policy = RefreshPolicy()
    okta = grace_provider(30)
    assert not policy.grace_over(okta, spent_since=1000.0, now=1036.9)  # 30 s grace + 7 s budget
    assert policy.grace_over(okta, spent_since=1000.0, now=1037.0)
    assert not policy.grace_over(grace_provider(0), spent_since=0.0, now=1e9)  # no grace: re-send once, knowingly
    assert not policy.grace_over(grace_provider(30, RotationMode.NEVER), spent_since=0.0, now=1e9)


@pytest.mark.slow
def test_a_stopped_holders_lease_is_short_enough_to_re_send_inside_the_grace(tmp_path: Path, make_sim: Sim) -> None:
    """Okta-like 30 s grace, default policy: the holder is alive but stopped after the provider rotated, so its
    lease is waited out; it is 15 s (half the grace), so the re-send still lands inside the grace and gets the
    successor. Resumed, the old holder finds the generation committed and serves the store's state."""
    sim = make_sim(rotation="always", reuse_grace=30)
    url = f"sqlite://{tmp_path}/s.db"
    setup(url, sim, grace=30)
    gate = tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-m", "grantkeeper", "--store", url, "refresh", "g", "--force"],
                              env=env(f"after_send=wait:{gate}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        wait_for(lambda: sim.stats.refresh_calls == 1, "the holder's request")
        holder.send_signal(signal.SIGSTOP)
        lease = held_lease(url)
        token = cli(url, "token", "g")
        assert token.returncode == 0, token.stderr
        first, resend = resend_pair(url)
        assert resend.resend_of == first.id and resend.state is AttemptState.COMMITTED
        assert resend.started_at >= lease.expires_at  # the live holder was waited for ...
        assert resend.started_at - first.started_at < 30  # ... and the re-send still came inside the grace
        assert sim.stats.grace_replays == 1
    finally:
        gate.touch()
        holder.send_signal(signal.SIGCONT)
        _, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    with Keeper.open(url) as keeper:
        grant = keeper.store.get_grant("g")
    assert grant.generation == 3 and grant.refresh_token is not None
    assert sim.is_active(grant.refresh_token.reveal()) and sim.stats.errors == {}


class LaterClock:
    """The system clock, `ahead` seconds in the future: a recovery that comes long after the crash."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def now(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.slow
def test_no_re_send_once_the_grace_has_surely_passed(tmp_path: Path, make_sim: Sim) -> None:
    """Killed after the provider rotated; the next refresh comes after the 30 s grace: it does not send the spent
    token (which would make a reuse-detecting provider revoke the grant) and reports lost_in_flight at once,
    naming the crashed attempt; the grant is marked for re-consent."""
    later = [0.0]  # the provider's clock moves on with ours
    sim = make_sim(rotation="always", reuse_grace=30, clock=lambda: time.monotonic() + later[0])
    url = f"sqlite://{tmp_path}/s.db"
    setup(url, sim, grace=30)
    assert cli(url, "refresh", "g", "--force", failpoints="after_send=kill").returncode == -signal.SIGKILL
    crashed = attempts(url)[-1]
    later[0] = 120.0
    with Keeper.open(url, clock=LaterClock(120)) as keeper:
        with pytest.raises(Exception) as caught:
            keeper.access_token("g")
        grant = keeper.store.get_grant("g")
        last = keeper.store.list_attempts("g")[0]
    assert getattr(caught.value, "code", None) == "lost_in_flight"
    assert getattr(caught.value, "attempt_id", None) == crashed.id
    assert sim.stats.refresh_calls == 1  # the spent token was not sent again ...
    assert sim.stats.reuse_detections == 0  # ... so the provider saw no reuse to revoke the grant for
    assert grant.state is GrantState.NEEDS_REAUTH
    assert last.resend_of == crashed.id and last.outcome_class is OutcomeClass.LOST_IN_FLIGHT
    assert last.evidence.get("not_resent") is True


def test_memory_store_has_no_signal_and_waits_out_leases() -> None:
    """memory:// lives in one process: no liveness signal, so a lease there is only ever waited out."""
    store = open_store("memory://")
    try:
        assert store.liveness is None and store.worker_alive("anyone") is None
    finally:
        store.close()


class _ResettingConnection:
    """A session behind a pooler that resets it after every transaction (``DISCARD ALL`` drops advisory locks)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._conn = psycopg.connect(url, autocommit=True)
        self.closed = False

    def execute(self, sql: str, params: Any = ()) -> Any:
        result = self._conn.execute(sql, params)
        self._conn.execute("SELECT pg_advisory_unlock_all()")
        return result

    def close(self) -> None:
        self.closed = True
        self._conn.close()


@pytest.mark.postgres
def test_a_lock_a_pooler_resets_is_no_signal_at_all(pg_url: str) -> None:
    """Behind a pooler that resets sessions the lock would vanish while its worker lives; a key recorded for it
    would let others take a live worker's lease. The signal is refused instead (leases fall back to the TTL)."""
    from grantkeeper.stores.liveness import AdvisoryLiveness

    liveness = AdvisoryLiveness(lambda: _ResettingConnection(pg_url))
    try:
        assert liveness.hold("w") is None
    finally:
        liveness.close()
    working = AdvisoryLiveness(lambda: __import__("psycopg").connect(pg_url, autocommit=True))
    try:
        assert working.hold("w") == working.key_for("w")
    finally:
        working.close()


@pytest.mark.postgres
def test_a_dropped_liveness_session_is_noticed_at_the_next_claim(pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """The server ends the liveness session (restart, pg_terminate_backend) while its process lives: the next
    claim sees it without a round trip and takes the lock again on a new session before recording it."""
    import psycopg

    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    store, observer = open_store(pg_url, migrate=True), open_store(pg_url)
    try:
        assert store.liveness is not None
        key = store.liveness.hold("w")
        assert key is not None and observer.worker_alive("w") is True
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'grantkeeper liveness'")  # fmt: skip
        wait_for(lambda: observer.worker_alive("w") is False, "the server to end the session")
        assert store.liveness.hold("w") == key  # what a claim records now is held again
        assert observer.worker_alive("w") is True
    finally:
        store.close()
        observer.close()
