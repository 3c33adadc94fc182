"""Two `grantkeeper schedule` instances on one PostgreSQL store share the due work; one is SIGKILLed while its
refreshes are in flight and nothing is lost.

A strict provider (rotation always, no reuse grace) with every token request held 0.3 s, so the killed instance has
requests in flight at the provider when it dies. Before the kill no grant is refreshed twice in one generation (the
simulator detects any reuse). After it, the survivor takes the dead instance's grants over once their hold runs out;
each grant ends healthy (and refreshes once more), or is named ``lost_in_flight`` by the doctor because the killed
instance's request reached the provider and its answer died with it: never an unexplained invalid_grant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grantkeeper import Keeper
from grantkeeper.model import AttemptState, GrantState
from grantkeeper.stores import open_store
from grantkeeper.testing.simulator import Delay
from tests.helpers import setup_grant

GRANTS = 24
CONFIG = """
[scheduler]
hold = 4
tick = 0.2
lead_min = 1.0
lead_max = 2.0
"""


def _schedule(url: str, config: Path, log: Path) -> subprocess.Popen[str]:
    """A `grantkeeper schedule` process logging to `log` (a file: a pipe nobody reads would fill and block it)."""
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "grantkeeper", "--store", url, "schedule", "--config",
                                 str(config)], stdout=subprocess.DEVNULL, stderr=sink, text=True)  # fmt: skip


def _wait(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_instances_share_the_work_and_a_killed_one_loses_nothing(
    postgres_store_url: str, make_sim: Callable[..., Any], tmp_path: Path
) -> None:
    sim = make_sim(access_ttl=5.0, rotation="always", reuse_grace=0)
    names = [f"g{i:02d}" for i in range(GRANTS)]
    for name in names:
        setup_grant(postgres_store_url, sim, grant=name, rotation="always", grace=0.0, skew=0.5)
    store = open_store(postgres_store_url)
    for name in names:
        store.set_hot(name, True)
    config = tmp_path / "grantkeeper.toml"
    config.write_text(CONFIG)
    sim.inject(Delay(0.3), times=1_000_000)

    def attempts_by(pid: int) -> list[Any]:
        return [a for n in names for a in store.list_attempts(n, limit=200) if f":{pid}:" in a.worker]

    def in_flight(pid: int) -> int:
        return sum(1 for n in names if (h := store.lease_holder(n, now=time.time())) and f":{pid}:" in h.worker)

    first = _schedule(postgres_store_url, config, tmp_path / "first.log")
    second = _schedule(postgres_store_url, config, tmp_path / "second.log")
    try:
        _wait(lambda: len(attempts_by(first.pid)) >= GRANTS and len(attempts_by(second.pid)) >= 4, "both at work")
        before = sim.stats
        assert before.reuse_detections == 0 and before.errors == {}  # shared, never refreshed twice per generation
        _wait(lambda: in_flight(first.pid) >= 2, "the first instance's requests in flight")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        killed_at = time.time()
        interrupted = {(a.grant, a.id) for a in attempts_by(first.pid) if a.state is AttemptState.OPEN}
        assert interrupted, "the kill should interrupt attempts in flight"

        # The survivor takes the dead instance's grants over once their hold runs out. An attempt that may have
        # spent a token is re-sent (and, refused, named lost_in_flight) only after the store's adopt_after wait
        # (60 s by default): the dead worker might have been cut off from the database with the successor in its
        # own host's recovery storage.
        def settled(grant: str, attempt_id: int) -> bool:  # lost and said so, or refreshed past the attempt
            now = store.get_grant(grant)
            spent = store.get_attempt(grant, attempt_id)
            return now.state is GrantState.NEEDS_REAUTH or (spent is not None and now.generation > spent.generation)

        _wait(lambda: all(settled(g, a) for g, a in interrupted), "every interrupted grant settled by the survivor",
              timeout=180.0)  # fmt: skip
        survivor_after_kill = [a for a in attempts_by(second.pid) if a.started_at > killed_at]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        second.wait(60)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    lost, healthy = [], []
    with Keeper.open(postgres_store_url, worker="checker") as keeper:
        for name in names:
            grant = store.get_grant(name)
            if grant.state is GrantState.NEEDS_REAUTH:
                lost.append((name, keeper.doctor(name).cause))
            else:
                before_gen = grant.generation
                assert keeper.refresh(name, force=True).generation == before_gen + 1  # its stored token is live
                healthy.append(name)
    store.close()
    # a grant is only lost where the dead instance's request reached the strict provider, and the doctor says so
    assert all(cause == "lost_in_flight" for _, cause in lost), lost
    assert {name for name, _ in lost} <= {grant for grant, _ in interrupted}
    assert len(healthy) + len(lost) == GRANTS
    assert {a.grant for a in survivor_after_kill} >= {grant for grant, _ in interrupted}  # the survivor did it
