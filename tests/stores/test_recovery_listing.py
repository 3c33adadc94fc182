"""Local recovery storage is listed once and reused while the directory is unchanged (every claim asks for it), and
a successor another process keeps there is still found by the next claim of this one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from grantkeeper import Provider, Secret
from grantkeeper.keys.crypto import Crypto
from grantkeeper.stores import GrantUpdate, open_store
from grantkeeper.stores.recovery import RecoveryDir, RecoveryEntry

T0 = 1_800_000_000.0
KEY = bytes(range(32))


def _entry(grant: str, generation: int = 1) -> RecoveryEntry:
    update = GrantUpdate(refresh_token=Secret(f"successor-of-{grant}-{generation}"), access_token=None,
                         expires_at=None, scopes=None)  # fmt: skip
    return RecoveryEntry(grant, generation, 7, update, T0)


def _settle(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the directory's last change look long past: its mtime an hour back and, since a ctime cannot be set,
    the clock the listing reads 4 s ahead."""
    past = time.time() - 3600
    os.utime(directory, (past, past))
    ahead = time.time_ns() + 4_000_000_000
    monkeypatch.setattr(time, "time_ns", lambda: ahead)


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every os.listdir of a recovery directory, by path."""
    calls: list[str] = []
    real = os.listdir

    def counting(path: str | os.PathLike[str]) -> list[str]:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    return calls


def test_unchanged_directory_is_listed_once(
    tmp_path: Path, listings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "s.db.recovery"
    recovery = RecoveryDir(directory, Crypto(KEY))
    recovery.save(_entry("other"))
    _settle(directory, monkeypatch)
    listings.clear()
    assert recovery.entries("g") == []
    assert recovery.entries("g") == []
    assert [e.grant for e in recovery.entries("other")] == ["other"]
    assert len(listings) == 1


def test_a_successor_another_process_keeps_is_found(
    tmp_path: Path, listings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `RecoveryDir`s on one directory are two processes: what one saves, the other's next look finds, even
    when it had a settled listing of the directory from before."""
    directory = tmp_path / "s.db.recovery"
    here, there = RecoveryDir(directory, Crypto(KEY)), RecoveryDir(directory, Crypto(KEY))
    there.save(_entry("other"))
    _settle(directory, monkeypatch)
    assert here.entries("g") == []  # listed and kept
    assert here.entries("g") == []  # reused
    listed = len(listings)
    there.save(_entry("g"))
    found = here.entries("g")
    assert [(e.grant, e.expected_generation) for e in found] == [("g", 1)]
    assert len(listings) > listed
    there.remove(found[0])
    assert here.entries("g") == []


def test_a_recently_changed_directory_is_listed_every_time(tmp_path: Path, listings: list[str]) -> None:
    """A change in the same timestamp granule as the listing would leave the directory's times as they were: a
    listing taken within seconds of a change is not reused."""
    directory = tmp_path / "s.db.recovery"
    recovery = RecoveryDir(directory, Crypto(KEY))
    recovery.save(_entry("other"))
    listings.clear()
    for _ in range(3):
        assert recovery.entries("g") == []
    assert len(listings) == 3


def test_own_writes_are_seen_at_once(tmp_path: Path) -> None:
    recovery = RecoveryDir(tmp_path / "s.db.recovery", Crypto(KEY))
    assert recovery.entries("g") == []  # no directory yet
    recovery.save(_entry("g"))
    (entry,) = recovery.entries("g")
    recovery.remove(entry)
    assert recovery.entries("g") == []


def test_claim_commits_a_successor_kept_by_another_process_after_a_settled_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim this listing serves: a store whose last claim listed an old, unchanged directory still commits the
    successor another process (another store on the same file) kept there since, instead of spending the old token."""
    url = f"sqlite://{tmp_path}/s.db"
    here, there = open_store(url), open_store(url)
    try:
        here.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"), now=T0)
        here.import_grant("g", provider="p", refresh_token=Secret("refresh-token-one-AAAAAAAA"), scopes=(), now=T0)
        there.recovery.save(_entry("other"))
        _settle(tmp_path / "s.db.recovery", monkeypatch)
        first = here.claim("g", worker="w1", lease_ttl=30, now=T0, force=True, seen_generation=None)
        assert first.lease is not None and first.attempt is not None
        successor = GrantUpdate(refresh_token=Secret("refresh-token-two-BBBBBBBB"),
                                access_token=Secret("access-token-two-CCCCCCCC"), expires_at=T0 + 3600,
                                scopes=None)  # fmt: skip
        # The other process's commit failed: it kept the successor in recovery storage and released the lease.
        there.save_recovery("g", expected_generation=1, attempt_id=first.attempt.id, update=successor, now=T0)
        there.release(first.lease)
        second = here.claim("g", worker="w2", lease_ttl=30, now=T0 + 1, force=True, seen_generation=1)
        assert second.recovered and second.lease is None
        assert second.grant.generation == 2
        assert second.grant.refresh_token == Secret("refresh-token-two-BBBBBBBB")
    finally:
        here.close()
        there.close()
