"""SIGKILL at each named point of the refresh transaction, then a fresh process recovers (failure table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import AttemptState, GrantState, Keeper
from tests.helpers import add_grant

Sim = Callable[..., object]
#: A killed holder's lease is taken over at once (its liveness signal is gone), so these need not be short; a
#: 0.25 s exchange deadline made an answered exchange ambiguous on a busy machine, which is another row of the
#: failure table than the one each test kills at.
LEASE_TTL = 11.0

CHILD = """
import json, sys
from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
policy = RefreshPolicy(lease_ttl=float(sys.argv[2]), request_timeout=5.0, wait_timeout=30, deadline=10)
with Keeper.open(sys.argv[1], policy=policy) as keeper:
    try:
        grant = keeper.refresh("g", force=sys.argv[3] == "force")
        print(json.dumps({"generation": grant.generation}))
    except GrantkeeperError as exc:
        print(json.dumps({"error": exc.code, "attempt_id": exc.attempt_id}))
"""


def run_child(url: str, *, failpoint: str | None = None, force: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    if failpoint:
        env["GRANTKEEPER_FAILPOINTS"] = f"{failpoint}=kill"
    return subprocess.run(
        [sys.executable, "-c", CHILD, url, str(LEASE_TTL), "force" if force else "plain"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def recover(url: str) -> dict[str, object]:
    result = run_child(url, force=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


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
def test_crash_before_the_request_is_sent(tmp_path: Path, make_sim: Sim, point: str, mode: str) -> None:
    """Killed before sending: the next process re-sends the recorded attempt once and succeeds in every mode. A
    re-send answered with a new refresh token is not served on trust (it could be a grace replay): one more
    refresh with the successor gets the access token that is served."""
    sim = make_sim(**MODES[mode]["sim"])
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    killed = run_child(url, failpoint=point)
    assert killed.returncode == -signal.SIGKILL
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]
    rotates = mode != "never"
    assert recover(url) == {"generation": 3 if rotates else 2}
    with Keeper.open(url) as k:
        resend, crashed = k.store.list_attempts("g")[int(rotates) : int(rotates) + 2]
    assert crashed.state is AttemptState.ABANDONED and resend.resend_of == crashed.id
    assert resend.state is AttemptState.COMMITTED
    assert sim.stats.refresh_calls == 1 + rotates and sim.stats.errors == {}  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_send", "before_commit"])
def test_crash_after_send_without_grace_is_lost_in_flight(tmp_path: Path, make_sim: Sim, point: str) -> None:
    """Killed after the provider rotated, no grace: the one re-send is rejected and reported lost_in_flight,
    naming the crashed attempt; the grant is marked for re-consent, not silently retried."""
    sim = make_sim(rotation="always", reuse_grace=0)
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as k:
        add_grant(k, sim)
    assert run_child(url, failpoint=point).returncode == -signal.SIGKILL
    with Keeper.open(url) as k:
        crashed = k.store.list_attempts("g")[0]
    outcome = recover(url)
    assert outcome == {"error": "lost_in_flight", "attempt_id": crashed.id}
    with Keeper.open(url) as k:
        assert k.store.get_grant("g").state is GrantState.NEEDS_REAUTH
        assert "lost_in_flight" in (k.store.get_grant("g").last_error or "")
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]
    # A further call does not spend anything: the dead grant is reported from the store.
    assert recover(url)["error"] == "needs_reauth"
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["always-grace30", "never"])
@pytest.mark.parametrize("point", ["after_send", "before_commit"])
def test_crash_after_send_with_grace_or_no_rotation_recovers(tmp_path: Path, make_sim: Sim, point: str,
                                                             mode: str) -> None:  # fmt: skip
    """Killed after sending, but the provider allows it (grace window, or no rotation): the re-send gets a
    valid answer and is committed; nothing is lost. With rotation, one more refresh replaces the re-send's
    access token (generation 3)."""
    sim = make_sim(**MODES[mode]["sim"])
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    assert run_child(url, failpoint=point).returncode == -signal.SIGKILL
    assert recover(url) == {"generation": 3 if mode == "always-grace30" else 2}
    with Keeper.open(url) as k:
        grant = k.store.get_grant("g")
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
    assert sim.stats.errors == {}  # type: ignore[attr-defined]
    if mode == "always-grace30":
        assert sim.stats.grace_replays == 1  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_crash_after_commit_loses_nothing(tmp_path: Path, make_sim: Sim, mode: str) -> None:
    """Killed right after the commit: the next process uses generation+1 with no provider call, and a forced
    refresh spends the new token normally."""
    sim = make_sim(**MODES[mode]["sim"])
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as k:
        add_grant(k, sim, **MODES[mode]["provider"])
    assert run_child(url, failpoint="after_commit").returncode == -signal.SIGKILL
    assert recover(url) == {"generation": 2}
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    result = run_child(url)
    assert json.loads(result.stdout) == {"generation": 3}
    assert sim.stats.errors == {}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_waiters_take_over_from_a_killed_holder(tmp_path: Path, make_sim: Sim) -> None:
    """A lease holder killed after sending while 4 other processes wait: exactly one of them re-sends (inside
    the grace) and then once more with the successor (the re-send's access token is not served on trust), all 4
    get generation 3, and the provider saw three calls in total."""
    sim = make_sim(rotation="always", reuse_grace=30, access_ttl=3600)
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as k:
        add_grant(k, sim, grace=30)
    env = {**os.environ, "GRANTKEEPER_FAILPOINTS": "after_send=sleep:0.5,before_commit=kill"}
    holder = subprocess.Popen([sys.executable, "-c", CHILD, url, str(LEASE_TTL), "force"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while sim.stats.refresh_calls == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    clean = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    waiters = [
        subprocess.Popen([sys.executable, "-c", CHILD, url, str(LEASE_TTL), "plain"], env=clean,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    outputs = [json.loads(w.communicate(timeout=60)[0]) for w in waiters]
    assert outputs == [{"generation": 3}] * 4
    assert sim.stats.refresh_calls == 3 and sim.stats.grace_replays == 1  # type: ignore[attr-defined]
