"""SIGKILL inside a group-commit batch: a crash anywhere in a batch is recovered per grant exactly as a crash in a
single refresh is (DESIGN failure table, tests/system/test_crash.py).

A child process (tests/engine/group_commit_child.py) refreshes 8 grants at once through `GroupCommit` against the
simulator and is SIGKILLed at a failpoint: the flow that reaches it first dies, the other 7 are wherever they are
(claimed in the same batch or not yet, request out or answered, commit in the batch that just went durable or in
the next one). After the kill each grant is sorted by what the store and the provider show:

* committed: its commit was durable before the kill (generation 2);
* in flight: the provider rotated its token (the successor died with the child), nothing committed;
* claimed: its attempt is recorded, the provider never saw the token;
* unclaimed: its claim never became durable (no attempt, no lease).

(With a provider that never rotates, in flight and claimed cannot be told apart from outside; they are one class,
and the provider cannot lose anything.) Then a fresh keeper refreshes each grant, and each must end as its row of
the failure table says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AttemptState, GrantkeeperError, GrantState, Keeper, RefreshPolicy, Secret
from grantkeeper.stores import open_store
from tests.helpers import provider_for
from tests.system.test_crash import MODES

Sim = Callable[..., Any]
GRANTS = 8
#: The failpoints of every refresh in a batch (``after_recovery_save``, reached only when the store refuses the
#: commit, has a test of its own below).
POINTS = ["after_claim", "before_send", "after_send", "before_commit", "after_commit"]
ROOT = Path(__file__).resolve().parents[2]
#: Recovery knows the killed child is gone: it re-sends the child's attempts now (on PostgreSQL the default first
#: defers a risky re-send, test_crash's `deferred_first`).
RECOVERY = RefreshPolicy(lease_ttl=11.0, request_timeout=5.0, wait_timeout=30.0, deadline=10.0, adopt_after=0.0)


@dataclass(frozen=True)
class AtKill:
    """One grant as the kill left it."""

    name: str
    token: str  # the refresh token it was imported with
    kind: str  # committed, kept, in_flight, claimed, unclaimed; "uncommitted" for a provider that never rotates
    open_attempt: int | None  # the attempt the child left open (the one recovery re-sends)


def _import_grants(url: str, sim: Any, provider_options: dict[str, Any]) -> dict[str, str]:
    tokens = {f"g{i}": str(sim.issue_grant()) for i in range(GRANTS)}
    store = open_store(url)
    try:
        store.put_provider(provider_for(sim, **provider_options), now=time.time())
        for name, token in tokens.items():
            store.import_grant(name, provider="sim", refresh_token=Secret(token), scopes=(), now=time.time())
    finally:
        store.close()
    return tokens


def _child(url: str, *, stagger: float, mode: str, names: list[str], point: str | None = None) -> Any:
    """Run group_commit_child (killed at `point`, if given); what it did."""
    env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    if point is not None:
        env["GRANTKEEPER_FAILPOINTS"] = f"{point}=kill"
    command = [sys.executable, "-m", "tests.engine.group_commit_child", url, str(stagger), mode, *names]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _kill_in_batch(url: str, point: str, stagger: float, names: list[str], *, refused: bool = False) -> list[list[str]]:
    """The child, killed at `point` (with the store refusing writes from its first commit on, if `refused`); the
    batches it committed before it died."""
    child = _child(url, stagger=stagger, mode="force-refused" if refused else "force", names=names, point=point)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    return [json.loads(line)["batch"] for line in child.stdout.splitlines()]


def _settled(sim: Any) -> Any:
    """The provider's stats once it has answered every request the child got out before it died (a request can
    still be in the provider's hands after the kill: classified before it is answered, a grant would look unspent
    and then rotate)."""
    deadline, last = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        stats = sim.stats
        if stats == last and stats.refresh_calls == stats.successes + sum(stats.errors.values()):
            return stats
        last = stats
        time.sleep(0.2)
    raise AssertionError(f"the provider is still busy with the killed child's requests: {last}")


def _as_killed(url: str, sim: Any, tokens: dict[str, str], rotates: bool) -> list[AtKill]:
    store = open_store(url)
    try:
        found = []
        for name, token in tokens.items():
            generation = store.get_grant(name).generation
            attempts = store.list_attempts(name)
            open_ids = [a.id for a in attempts if a.state is AttemptState.OPEN]
            assert generation in (1, 2) and len(open_ids) <= 1, (name, generation, attempts)
            if generation == 2:
                kind = "committed"
                assert open_ids == [] and [a.state for a in attempts] == [AttemptState.COMMITTED]
            elif store.pending_recovery(name):
                kind = "kept"  # its successor waits in local recovery storage (the store refused the commit)
                assert not sim.is_active(token) or not rotates
            elif not open_ids:
                kind = "unclaimed"
                assert attempts == [] and sim.is_active(token)
            elif not rotates:
                kind = "uncommitted"
            else:
                kind = "claimed" if sim.is_active(token) else "in_flight"
            found.append(AtKill(name, token, kind, open_ids[0] if open_ids else None))
        return found
    finally:
        store.close()


@dataclass
class Recovered:
    generations: dict[str, int]  # the grants recovery kept alive
    lost: dict[str, tuple[str, int | None]]  # the others: error code and the attempt it names
    diagnoses: dict[str, tuple[str, int | None]]  # doctor of each lost grant: cause and the attempt that spent it


def _recover(url: str, grants: list[AtKill]) -> Recovered:
    """Each grant refreshed as its next caller would (not forced), half of them (every other one, so both halves
    hold grants the kill left at different stages) by a fresh scheduler child in batches, the others by a fresh
    keeper one after another; then the failed ones diagnosed."""
    names = [g.name for g in grants]
    recovered = Recovered({}, {}, {})
    child = _child(url, stagger=0.0, mode="plain", names=names[1::2])
    assert child.returncode == 0, child.stderr[-3000:]
    for name, outcome in json.loads(child.stdout.splitlines()[-1])["outcomes"].items():
        if "error" in outcome:
            recovered.lost[name] = (outcome["error"], outcome["attempt_id"])
        else:
            recovered.generations[name] = outcome["generation"]
    with Keeper.open(url, policy=RECOVERY) as keeper:
        for name in names[::2]:
            try:
                recovered.generations[name] = keeper.refresh(name).generation
            except GrantkeeperError as exc:
                recovered.lost[name] = (exc.code, exc.attempt_id)
        for name in recovered.lost:
            diagnosis = keeper.doctor(name)
            spent_by = diagnosis.evidence.get("spent_by") or {}
            recovered.diagnoses[name] = (diagnosis.cause, spent_by.get("id"))
        store = keeper.store
        now = time.time()
        assert [name for name in names if store.lease_holder(name, now=now) is not None] == []
        states = {name: store.get_grant(name).state for name in names}
    assert {n for n, s in states.items() if s is GrantState.NEEDS_REAUTH} == set(recovered.lost)
    return recovered


#: The generation each kind of grant ends at after recovery, provider rotating (a re-sent attempt's answer is not
#: served on trust: one more refresh with its successor, test_crash) or not.
ROTATING_END = {"committed": 2, "kept": 2, "unclaimed": 2, "claimed": 3, "in_flight": 3}
STEADY_END = {"committed": 2, "kept": 2, "unclaimed": 2, "uncommitted": 2}


#: How far apart the child starts its refreshes: all at once (one claim batch of 8, the sends together), or spread
#: so that the kill finds the other grants at every stage, from not yet claimed to committed.
STAGGER = {"together": 0.0, "staggered": 0.015}


def _kill_and_recover(url: str, sim: Any, point: str, mode: str, start: str, *, refused: bool = False) -> None:
    """Kill the child at `point` in its batch (the store refusing writes from its first commit on, if `refused`),
    sort the grants, recover them, and check each against its row of the failure table, and the provider's
    counters against them all."""
    rotates, grace = mode != "never", mode == "always-grace30"
    tokens = _import_grants(url, sim, dict(MODES[mode]["provider"]))

    batches = _kill_in_batch(url, point, STAGGER[start], list(tokens), refused=refused)
    at_kill = _settled(sim)
    grants = _as_killed(url, sim, tokens, rotates)
    kinds = Counter(g.kind for g in grants)
    # The child sent nothing twice and nothing was refused: every provider call so far answered a first use.
    assert at_kill.errors == {} and at_kill.grace_replays == 0 and at_kill.reuse_detections == 0
    assert at_kill.successes == at_kill.refresh_calls
    # What the failpoint guarantees about the flow that reached it first (the others are wherever they were).
    if point in ("after_claim", "before_send"):
        assert at_kill.refresh_calls == 0 and kinds["committed"] == 0 and sum(len(b) for b in batches) >= 1
    elif point in ("after_send", "before_commit"):
        assert kinds["committed"] < GRANTS and at_kill.refresh_calls >= 1
        assert not rotates or kinds["in_flight"] >= 1  # the killed flow's own answer
    elif point == "after_recovery_save":
        assert kinds["kept"] >= 1  # the killed flow's own
    else:
        assert kinds["committed"] >= 1
    if rotates:
        assert at_kill.rotations == kinds["committed"] + kinds["kept"] + kinds["in_flight"]
    else:
        sent_at_most = kinds["committed"] + kinds["kept"] + kinds["uncommitted"]
        assert kinds["committed"] + kinds["kept"] <= at_kill.refresh_calls <= sent_at_most

    recovered = _recover(url, grants)

    lost_expected = {g.name: g for g in grants if g.kind == "in_flight" and not grace}
    # Strict provider, no grace: the in-flight grants alone are lost, each named lost_in_flight for the attempt the
    # child left open, by the refresh and by doctor (never a bare invalid_grant).
    assert recovered.lost == {n: ("lost_in_flight", g.open_attempt) for n, g in lost_expected.items()}
    assert recovered.diagnoses == {n: ("lost_in_flight", g.open_attempt) for n, g in lost_expected.items()}
    ends = ROTATING_END if rotates else STEADY_END
    assert recovered.generations == {g.name: ends[g.kind] for g in grants if g.name not in lost_expected}
    store = open_store(url)
    try:
        for name in recovered.generations:
            refresh_token = store.get_grant(name).refresh_token
            assert refresh_token is not None and sim.is_active(refresh_token.reveal()), name
        assert store.pending_recovery() == 0
    finally:
        store.close()

    # The provider's side: each token spent once, except one re-send per interrupted attempt that reached it.
    stats = sim.stats
    lost, replays = len(lost_expected), kinds["in_flight"] if grace else 0
    assert stats.refresh_calls == stats.successes + sum(stats.errors.values())
    assert stats.errors == ({"invalid_grant": lost} if lost else {})
    assert stats.reuse_detections == lost and stats.grace_replays == replays
    if rotates:
        assert stats.successes == stats.rotations + replays
        # every committed generation came from a rotation or a grace replay; every in-flight rotation's own answer
        # died with the child
        assert stats.rotations == sum(g - 1 for g in recovered.generations.values()) - replays + kinds["in_flight"]
    else:  # one re-send for each grant the child did not commit or keep, nothing for the others
        assert stats.refresh_calls == at_kill.refresh_calls + kinds["uncommitted"] + kinds["unclaimed"]
    print(f"{point} {mode} {start}: batches {[len(b) for b in batches]} kinds {dict(kinds)} lost {lost}")


@pytest.mark.slow
@pytest.mark.parametrize("start", STAGGER)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_inside_a_batch_is_recovered_per_grant(shared_store_url: str, make_sim: Sim, point: str, mode: str,
                                                       start: str) -> None:  # fmt: skip
    _kill_and_recover(shared_store_url, make_sim(**MODES[mode]["sim"]), point, mode, start)


@pytest.mark.slow
@pytest.mark.parametrize("start", STAGGER)
@pytest.mark.parametrize("mode", MODES)
def test_sigkill_after_a_refused_batch_commit_loses_nothing_kept(shared_store_url: str, make_sim: Sim, mode: str,
                                                                 start: str) -> None:  # fmt: skip
    """The store refuses the batch's commit (SQLite: locked by another connection; PostgreSQL: a trigger refuses
    changes of grants while the child lives): every refresh of that batch keeps its successor in local recovery
    storage; the child dies after the first one is saved. Every kept successor is committed by recovery without a
    provider call; the rest are recovered as above."""
    sim = make_sim(**MODES[mode]["sim"])
    _kill_and_recover(shared_store_url, sim, "after_recovery_save", mode, start, refused=True)
