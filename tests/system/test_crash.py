"""SIGKILL at each named point of the refresh transaction, then a fresh process recovers (failure table).

Every test runs on each face in `FACES`: the blocking `Keeper` on SQLite, and `AsyncKeeper` on PostgreSQL's native
asyncio store (`AsyncPostgresStore`: psycopg_pool's AsyncConnectionPool, the liveness lock taken from a worker
thread) killed at the same points, then recovered by a fresh `AsyncKeeper` or a fresh blocking `Keeper`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from grantkeeper import Attempt, AttemptState, GrantState, Keeper
from tests.conftest import _store_of_kind
from tests.helpers import add_grant

Sim = Callable[..., object]
#: A killed holder's lease is taken over at once (its liveness signal is gone), so these need not be short; a
#: 0.25 s exchange deadline made an answered exchange ambiguous on a busy machine, which is another row of the
#: failure table than the one each test kills at.
LEASE_TTL = 11.0

#: argv: store URL, lease TTL, "force" or "plain", the keeper ("sync": `Keeper`, "async": `AsyncKeeper`), adopt_after.
CHILD = """
import asyncio, json, sys
from grantkeeper import AsyncKeeper, GrantkeeperError, Keeper, RefreshPolicy
from grantkeeper.stores.postgres_async import AsyncPostgresStore
url, force, keeper_face = sys.argv[1], sys.argv[3] == "force", sys.argv[4]
policy = RefreshPolicy(lease_ttl=float(sys.argv[2]), request_timeout=5.0, wait_timeout=30, deadline=10,
                       adopt_after=float(sys.argv[5]))

def refresh_blocking():
    with Keeper.open(url, policy=policy) as keeper:
        return keeper.refresh("g", force=force)

async def refresh_async():
    async with await AsyncKeeper.open(url, policy=policy) as keeper:
        # the native asyncio store, not the blocking one in worker threads
        assert isinstance(keeper.store, AsyncPostgresStore) == url.startswith("postgresql://"), keeper.store
        return await keeper.refresh("g", force=force)

try:
    grant = asyncio.run(refresh_async()) if keeper_face == "async" else refresh_blocking()
    print(json.dumps({"generation": grant.generation}))
except GrantkeeperError as exc:
    print(json.dumps({"error": exc.code, "attempt_id": exc.attempt_id}))
"""


@dataclass(frozen=True)
class Face:
    """Where the grant lives, which keeper is killed, and which keeper recovers after it."""

    kind: str  # "sqlite" or "postgres"
    killed: str  # "sync" or "async"
    recovers: str  # "sync" or "async"


FACES = {
    "sqlite-sync": Face("sqlite", killed="sync", recovers="sync"),
    "postgres-async": Face("postgres", killed="async", recovers="async"),
    "postgres-async-then-sync": Face("postgres", killed="async", recovers="sync"),
}


@dataclass(frozen=True)
class Crash:
    """One store on one face: run a refresh in a child process (killed at a failpoint, or recovering).

    Recovering processes run with ``adopt_after=0``: they know the killed process is gone. (On a multi-host store,
    PostgreSQL, the default first defers a risky re-send of another worker's attempt, since that worker could be
    alive behind an outage with the successor in its own recovery storage; `deferred_first` checks that.)"""

    url: str
    face: Face

    def command(self, *, force: bool, keeper: str, adopt_after: float = 0.0) -> list[str]:
        mode = "force" if force else "plain"
        return [sys.executable, "-c", CHILD, self.url, str(LEASE_TTL), mode, keeper, str(adopt_after)]

    def run(
        self, *, failpoint: str | None = None, force: bool = True, adopt_after: float = 0.0
    ) -> subprocess.CompletedProcess[str]:
        """A refresh by the killed face's keeper, SIGKILLed at `failpoint`; without one, by the recovering face's."""
        env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
        if failpoint:
            env["GRANTKEEPER_FAILPOINTS"] = f"{failpoint}=kill"
        keeper = self.face.killed if failpoint else self.face.recovers
        return subprocess.run(self.command(force=force, keeper=keeper, adopt_after=adopt_after), env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    def killed_at(self, failpoint: str) -> None:
        killed = self.run(failpoint=failpoint)
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr[-3000:])

    def recover(self, *, adopt_after: float = 0.0) -> dict[str, object]:
        """A plain refresh by the recovering face's keeper in a fresh process; what it answered."""
        result = self.run(force=False, adopt_after=adopt_after)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def deferred_first(self, crashed: Attempt) -> None:
        """On PostgreSQL, a recovering process with the default ``adopt_after`` does not re-send the killed
        worker's possibly spent token yet: it answers lease_timeout naming that attempt (docs/postgres.md)."""
        if self.face.kind == "postgres":
            assert self.recover(adopt_after=60.0) == {"error": "lease_timeout", "attempt_id": crashed.id}


@pytest.fixture(
    params=[
        pytest.param(name, marks=[pytest.mark.postgres] if face.kind == "postgres" else [])
        for name, face in FACES.items()
    ]
)
def crash(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Crash:
    """A fresh store of the face's kind (PostgreSQL: a migrated database, $GRANTKEEPER_KEY and a recovery dir in the
    environment the children inherit)."""
    face = FACES[request.param]
    return Crash(_store_of_kind(face.kind, request, tmp_path, monkeypatch), face)


MODES = {
    "always-grace0": {"sim": {"rotation": "always", "reuse_grace": 0}, "provider": {"rotation": "always"}},
    "always-grace30": {
        "sim": {"rotation": "always", "reuse_grace": 30},
        "provider": {"rotation": "always", "grace": 30},
    },
    "never": {"sim": {"rotation": "never"}, "provider": {"rotation": "never"}},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", ["after_claim", "before_send"])
def test_crash_before_the_request_is_sent(crash: Crash, make_sim: Sim, point: str, mode: str) -> None:
    """Killed before sending: the next process re-sends the recorded attempt once and succeeds in every mode. A
    re-send answered with a new refresh token is not served on trust (it could be a grace replay): one more
    refresh with the successor gets the access token that is served."""
    sim = make_sim(**MODES[mode]["sim"])
    with Keeper.open(crash.url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    crash.killed_at(point)
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]
    with Keeper.open(crash.url) as k:
        crashed = k.store.list_attempts("g")[0]
    if mode == "always-grace0":
        crash.deferred_first(crashed)
    rotates = mode != "never"
    assert crash.recover() == {"generation": 3 if rotates else 2}
    with Keeper.open(crash.url) as k:
        attempts = k.store.list_attempts("g")
    sent = [a for a in attempts if a.resend_of == crashed.id and a.state is not AttemptState.NOT_SENT]
    assert [a.state for a in sent] == [AttemptState.COMMITTED]  # one re-send (a deferral sends nothing)
    assert {a.id: a.state for a in attempts}[crashed.id] is AttemptState.ABANDONED
    assert sim.stats.refresh_calls == 1 + rotates and sim.stats.errors == {}  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_send", "before_commit"])
def test_crash_after_send_without_grace_is_lost_in_flight(crash: Crash, make_sim: Sim, point: str) -> None:
    """Killed after the provider rotated, no grace: the one re-send is rejected and reported lost_in_flight,
    naming the crashed attempt (and doctor names it too); the grant is marked for re-consent, not silently
    retried."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(crash.url) as k:
        add_grant(k, sim)
    crash.killed_at(point)
    with Keeper.open(crash.url) as k:
        crashed = k.store.list_attempts("g")[0]
    crash.deferred_first(crashed)
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    outcome = crash.recover()
    assert outcome == {"error": "lost_in_flight", "attempt_id": crashed.id}
    with Keeper.open(crash.url) as k:
        assert k.store.get_grant("g").state is GrantState.NEEDS_REAUTH
        assert "lost_in_flight" in (k.store.get_grant("g").last_error or "")
        diagnosis = k.doctor("g")
    assert diagnosis.cause == "lost_in_flight" and diagnosis.evidence["spent_by"]["id"] == crashed.id
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]
    # A further call does not spend anything: the dead grant is reported from the store.
    assert crash.recover()["error"] == "needs_reauth"
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["always-grace30", "never"])
@pytest.mark.parametrize("point", ["after_send", "before_commit"])
def test_crash_after_send_with_grace_or_no_rotation_recovers(crash: Crash, make_sim: Sim, point: str,
                                                             mode: str) -> None:  # fmt: skip
    """Killed after sending, but the provider allows it (grace window, or no rotation): the re-send gets a
    valid answer and is committed; nothing is lost. With rotation, one more refresh replaces the re-send's
    access token (generation 3)."""
    sim = make_sim(**MODES[mode]["sim"])
    with Keeper.open(crash.url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    crash.killed_at(point)
    assert crash.recover() == {"generation": 3 if mode == "always-grace30" else 2}
    with Keeper.open(crash.url) as k:
        grant = k.store.get_grant("g")
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
    assert sim.stats.errors == {}  # type: ignore[attr-defined]
    if mode == "always-grace30":
        assert sim.stats.grace_replays == 1  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_crash_after_commit_loses_nothing(crash: Crash, make_sim: Sim, mode: str) -> None:
    """Killed right after the commit: the next process uses generation+1 with no provider call, and a forced
    refresh spends the new token normally."""
    sim = make_sim(**MODES[mode]["sim"])
    with Keeper.open(crash.url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    crash.killed_at("after_commit")
    assert crash.recover() == {"generation": 2}
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    result = crash.run()
    assert json.loads(result.stdout) == {"generation": 3}
    assert sim.stats.errors == {}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_waiters_take_over_from_a_killed_holder(crash: Crash, make_sim: Sim) -> None:
    """A lease holder killed after sending while 4 other processes wait: exactly one of them re-sends (inside
    the grace) and then once more with the successor (the re-send's access token is not served on trust), all 4
    get generation 3, and the provider saw three calls in total."""
    sim = make_sim(rotation="always", reuse_grace=30, access_ttl=3600)
    with Keeper.open(crash.url) as k:
        add_grant(k, sim, grace=30)
    env = {**os.environ, "GRANTKEEPER_FAILPOINTS": "after_send=sleep:0.5,before_commit=kill"}
    holder = subprocess.Popen(crash.command(force=True, keeper=crash.face.killed), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while sim.stats.refresh_calls == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    clean = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    waiters = [
        subprocess.Popen(crash.command(force=False, keeper=crash.face.recovers), env=clean, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    outputs = [json.loads(w.communicate(timeout=60)[0]) for w in waiters]
    assert outputs == [{"generation": 3}] * 4
    assert sim.stats.refresh_calls == 3 and sim.stats.grace_replays == 1  # type: ignore[attr-defined]
