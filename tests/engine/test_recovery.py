"""Store unavailable at commit: the successor waits in durable local recovery storage, never lost (I1)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from grantkeeper import GrantkeeperError, Keeper, Secret, StoreUnavailable
from grantkeeper import _failpoints as failpoints
from grantkeeper.stores import SQLiteStore
from grantkeeper.stores.sql import SQLStore
from tests.helpers import FAST_POLICY, add_grant, resource_ok

Sim = Callable[..., object]


@contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock from a foreign connection: every writer gets 'database is locked'."""
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _keeper(tmp_path: Path, **kw: object) -> Keeper:
    store = SQLiteStore.open(tmp_path / "s.db", busy_timeout=0.2)
    return Keeper(store, policy=FAST_POLICY, **kw)  # type: ignore[arg-type]


def _lock_at_commit(db: Path) -> list[object]:
    """Arm the before_commit failpoint to take the write lock and keep it until the test releases it."""
    held: list[object] = []

    def lock() -> None:
        failpoints.clear_hooks()
        cm = write_locked(db)
        cm.__enter__()
        held.append(cm)

    failpoints.set_hook("before_commit", lock)
    return held


def _unlock(held: list[object]) -> None:
    for cm in held:
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def test_token_served_from_recovery_when_store_is_locked(tmp_path: Path, make_sim: Sim) -> None:
    """The caller gets a working access token; the successor is in an encrypted recovery file; the store is
    unchanged until it can be written."""
    sim = make_sim()
    keeper = _keeper(tmp_path)
    add_grant(keeper, sim)
    held = _lock_at_commit(tmp_path / "s.db")
    try:
        token = keeper.access_token("g")
        assert resource_ok(sim, token)
        assert len(list((tmp_path / "s.db.recovery").glob("*.gkr"))) == 1
    finally:
        _unlock(held)
    assert keeper.store.get_grant("g").generation == 1
    keeper.close()


def test_next_claim_commits_recovery_without_spending(tmp_path: Path, make_sim: Sim) -> None:
    """When the store is back, the next refresh commits the kept successor instead of calling the provider."""
    sim = make_sim()
    keeper = _keeper(tmp_path)
    add_grant(keeper, sim)
    held = _lock_at_commit(tmp_path / "s.db")
    try:
        keeper.access_token("g")
    finally:
        _unlock(held)
    # The first keeper's background replay may commit the successor first (it retries from 0.1 s on): either way
    # nothing is sent. `other` waits for the write lock like any worker would, and the recovery file is checked once
    # both keepers are closed (closing joins the replay, which removes the file after its commit).
    other = Keeper(SQLiteStore.open(tmp_path / "s.db"), policy=FAST_POLICY, worker="other-worker")
    try:
        grant = other.refresh("g")
    finally:
        keeper.close()
        other.close()
    assert grant.generation == 2 and sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
    assert list((tmp_path / "s.db.recovery").glob("*.gkr")) == []


def _exit_with_successor_in_recovery(tmp_path: Path) -> None:
    """A child process refreshes grant 'g' while the store is write-locked at its commit: it keeps the successor
    in a recovery file, serves the token, and exits (no background retry survives it)."""
    child = (
        "import sqlite3, sys\n"
        "from pathlib import Path\n"
        "from grantkeeper import Keeper, RefreshPolicy, _failpoints\n"
        "from grantkeeper.stores import SQLiteStore\n"
        "db = Path(sys.argv[1])\n"
        "blocker = sqlite3.connect(db, isolation_level=None)\n"
        "_failpoints.set_hook('before_commit', lambda: blocker.execute('BEGIN EXCLUSIVE'))\n"
        "k = Keeper(SQLiteStore.open(db, busy_timeout=0.2), policy=RefreshPolicy(lease_ttl=3, request_timeout=1))\n"
        "k.access_token('g')\n"
        "print(k.store.get_grant('g').generation)\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "s.db")], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert "local recovery storage" in result.stderr
    assert len(list((tmp_path / "s.db.recovery").glob("*.gkr"))) == 1


def test_recovery_replayed_on_next_process_start(tmp_path: Path, make_sim: Sim) -> None:
    """A process that kept a successor in recovery storage exits; the next process start commits it."""
    sim = make_sim()
    keeper = _keeper(tmp_path)
    add_grant(keeper, sim)
    keeper.close()
    _exit_with_successor_in_recovery(tmp_path)
    with Keeper.open(f"sqlite://{tmp_path}/s.db") as restarted:
        grant = restarted.store.get_grant("g")
        assert grant.generation == 2
        assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


def test_unwritable_recovery_dir_keeps_successor_in_process(tmp_path: Path, make_sim: Sim) -> None:
    """If even recovery storage cannot be written, the call fails saying so (naming the successor by
    fingerprint), the successor stays in the process, and the same keeper commits it once the store is writable:
    it is never silently dropped."""
    sim = make_sim()
    keeper = _keeper(tmp_path)
    add_grant(keeper, sim)
    (tmp_path / "s.db.recovery").write_text("a file where the recovery directory should be")
    held = _lock_at_commit(tmp_path / "s.db")
    try:
        with pytest.raises(StoreUnavailable, match=r"could not be made durable.*is not a directory") as raised:
            keeper.access_token("g")
    finally:
        _unlock(held)
    assert raised.value.fingerprint is not None and raised.value.fingerprint.startswith("fp_")
    assert keeper.store.get_grant("g").generation == 1
    grant = keeper.refresh("g")
    assert grant.generation == 2 and sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    assert grant.refresh_token == keeper.store.get_grant("g").refresh_token != Secret("")
    keeper.close()


def test_a_claim_that_rolls_back_keeps_the_recovery_file(tmp_path: Path, make_sim: Sim,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The claim that commits a kept successor fails after applying it (its transaction rolls back): the
    recovery file is still there, so the successor is not lost, and the next claim commits it without a
    provider call."""
    sim = make_sim()
    keeper = _keeper(tmp_path)
    add_grant(keeper, sim)
    keeper.close()
    _exit_with_successor_in_recovery(tmp_path)
    kept = list((tmp_path / "s.db.recovery").glob("*.gkr"))

    def fail(*_args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    other = _keeper(tmp_path, worker="other-worker")
    with monkeypatch.context() as patch:
        patch.setattr(SQLStore, "_close_recovered", staticmethod(fail))
        with pytest.raises(GrantkeeperError):
            other.refresh("g")
    assert list((tmp_path / "s.db.recovery").glob("*.gkr")) == kept
    assert other.store.get_grant("g").generation == 1
    grant = other.refresh("g")
    assert grant.generation == 2 and sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    assert grant.refresh_token is not None and sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
    assert list((tmp_path / "s.db.recovery").glob("*.gkr")) == []
    other.close()
