"""The examples in examples/ run as users would run them (a subprocess each) against the simulator.

Before each run the store already holds an access token that the simulator's resource server then treats as
expired (its clock is moved), so every example meets a real 401 ``invalid_token`` on its first requests: the
bridges must invalidate it and get the workers one refresh between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import Keeper
from grantkeeper.testing.clock import FakeClock
from tests.helpers import add_grant

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Sim = Callable[..., object]

CASES = {
    "sync_script.py": ["--requests", "10"],
    "async_service.py": ["--tasks", "50", "--requests", "3"],
    "worker_pool.py": ["--processes", "4", "--jobs", "40"],
}
EXPECTED_REQUESTS = {"sync_script.py": 10, "async_service.py": 150, "worker_pool.py": 40}


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(CASES))
def test_example_shares_one_refresh_after_a_rejected_token(example: str, make_sim: Sim, tmp_path: Path) -> None:
    """Every request succeeds, the provider sees exactly one refresh after the stored token is rejected, and
    no invalid_grant (rotation always, reuse detection on, grace 0)."""
    clock = FakeClock()
    sim = make_sim(clock=clock.monotonic, rotation="always", reuse_grace=0.0, reuse_detection=True)
    store = f"sqlite://{tmp_path}/grants.db"
    with Keeper.open(store) as setup:
        add_grant(setup, sim, grant="api")
        setup.access_token("api")  # stored, and trusted by every keeper that opens the store
    clock.advance(7200.0)  # ... but expired at the resource server

    url = sim.base_url + "/resource"  # type: ignore[attr-defined]
    argv = [sys.executable, str(EXAMPLES / example), "--store", store, "--grant", "api", "--url", url]
    run = subprocess.run([*argv, *CASES[example]], capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["statuses"] == {"200": EXPECTED_REQUESTS[example]}
    leaked = [t for t in sim.issued_tokens() if t in run.stdout + run.stderr]  # type: ignore[attr-defined]
    assert leaked == []
    stats = sim.stats  # type: ignore[attr-defined]
    assert stats.errors == {} and stats.refresh_calls == 2  # the setup's token, then one refresh for everyone
    with Keeper.open(store) as check:
        assert check.store.get_grant("api").generation == 3
