"""Creating and upgrading a store from many processes at once, and files that must appear whole or not at all.

Processes race for real: each waits for a start file, then opens (creating) the same SQLite store, or migrates
the same old store. Crash claims are tested with SIGKILL at the ``private_file_written`` failpoint: the data
is fully written under a temporary name, and the kill lands before it is put in place.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grantkeeper import EncryptionKeyError, Keeper, Provider
from grantkeeper.keys.sources import write_private_file
from grantkeeper.stores import open_store
from grantkeeper.stores.migrations import latest_version
from tests.helpers import MIGRATION_6_COLUMNS, drop_schedule_columns

pytestmark = pytest.mark.slow

PROCESSES = 8
ROUNDS = 3

_RACER = textwrap.dedent(
    """
    import os, sys, time
    from grantkeeper import Keeper, Provider
    url, go, index, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    if mode == "create":
        with Keeper.open(url, create=True) as keeper:
            keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"))
            keeper.import_grant(f"g{index}", provider="p", refresh_token=f"refresh-token-of-racer-{index}")
    else:
        from grantkeeper.stores import open_store
        open_store(url, migrate=True).close()
    print("ok")
    """
)


def _race(url: str, tmp_path: Path, mode: str) -> list[subprocess.CompletedProcess[str]]:
    go = tmp_path / f"go-{time.monotonic_ns()}"
    # Without $GRANTKEEPER_KEY the racers also race to create the store's key file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    command = [sys.executable, "-c", _RACER, url, str(go)]
    children = [
        subprocess.Popen([*command, str(i), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(PROCESSES)
    ]
    time.sleep(0.5)  # let every interpreter start and reach the wait, so they really start together
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return results


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_creating_one_store_at_once_all_succeed(tmp_path: Path, round_: int) -> None:
    """8 processes create the same new store at the same moment: each succeeds, there is one key, every grant
    is stored and readable, and no temporary file is left behind."""
    path = tmp_path / "new" / "store.db"
    results = _race(f"sqlite://{path}", tmp_path, "create")
    failures = [(r.returncode, r.stderr[-600:]) for r in results if r.returncode != 0]
    assert not failures
    key_file = path.with_name("store.db.key")
    assert len(key_file.read_text().split()) == 1
    assert not list(path.parent.glob("*.tmp"))
    with Keeper.open(f"sqlite://{path}", create=False) as keeper:
        assert keeper.store.schema_version() == latest_version("sqlite")
        grants = {g.name: g for g in keeper.store.list_grants()}
        assert sorted(grants) == sorted(f"g{i}" for i in range(PROCESSES))
        assert {g.refresh_token.reveal() for g in grants.values() if g.refresh_token is not None} == {
            f"refresh-token-of-racer-{i}" for i in range(PROCESSES)
        }


def test_processes_migrating_one_old_store_at_once_all_succeed(tmp_path: Path) -> None:
    """8 processes run the upgrade of the same old store at once: each succeeds, and the store is at the latest
    version with its grant intact (each migration was applied once)."""
    path = tmp_path / "old.db"
    url = f"sqlite://{path}"
    with Keeper.open(url) as keeper:
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"))
        keeper.import_grant("kept", provider="p", refresh_token="refresh-token-before-the-upgrade")
    raw = sqlite3.connect(path)
    drop_schedule_columns(raw.execute)  # migration 9
    raw.execute("ALTER TABLE leases DROP COLUMN liveness")  # migration 8
    for column in MIGRATION_6_COLUMNS:
        raw.execute(f"ALTER TABLE providers DROP COLUMN {column}")
    raw.execute("ALTER TABLE providers DROP COLUMN device_authorization_url")  # migration 5
    raw.execute("ALTER TABLE providers DROP COLUMN revocation_url")  # and 4
    raw.execute("ALTER TABLE providers DROP COLUMN authorization_url")
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()
    results = _race(url, tmp_path, "migrate")
    assert not [(r.returncode, r.stderr[-600:]) for r in results if r.returncode != 0]
    store = open_store(url)
    try:
        assert store.schema_version() == latest_version("sqlite")
        grant = store.get_grant("kept")
        assert grant.refresh_token is not None
        assert grant.refresh_token.reveal() == "refresh-token-before-the-upgrade"
    finally:
        store.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from grantkeeper.keys.sources import write_private_file
    write_private_file(Path(sys.argv[1]), sys.argv[2].encode() * 100_000, exclusive=sys.argv[3] == "exclusive")
    """
)


def _write_killed(path: Path, text: str, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRANTKEEPER_FAILPOINTS": "private_file_written=kill"}
    return subprocess.run([sys.executable, "-c", _WRITER, str(path), text, mode], capture_output=True, text=True,
                          timeout=60, env=env, check=False)  # fmt: skip


def test_a_replacing_write_killed_before_it_lands_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL after the new content is written, before the rename: the file still holds the old content,
    whole, with mode 0600."""
    path = tmp_path / "ring.key"
    write_private_file(path, b"old" * 100_000)
    killed = _write_killed(path, "new", "replace")
    assert killed.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old" * 100_000
    assert path.stat().st_mode & 0o777 == 0o600
    write_private_file(path, b"new")  # a leftover temporary file does not stand in the way
    assert path.read_bytes() == b"new"


def test_an_exclusive_write_killed_before_it_lands_leaves_no_file(tmp_path: Path) -> None:
    """SIGKILL during an exclusive create (a new store's key, an exported bundle): no file appears at all, so
    nobody ever reads half a key or half a bundle, and creating it again works."""
    path = tmp_path / "bundle.gkb"
    killed = _write_killed(path, "x", "exclusive")
    assert killed.returncode == -signal.SIGKILL
    assert not path.exists()
    write_private_file(path, b"whole", exclusive=True)
    assert path.read_bytes() == b"whole"
    with pytest.raises(FileExistsError):
        write_private_file(path, b"other", exclusive=True)
    assert path.read_bytes() == b"whole"


def test_store_creation_killed_while_writing_its_key_can_be_started_again(tmp_path: Path) -> None:
    """SIGKILL while a new store's key file is being written: neither the key nor the database exists
    afterwards, and the next command creates the store normally."""
    path = tmp_path / "s" / "store.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    code = "import sys; from grantkeeper.stores import open_store; open_store(sys.argv[1]).close()"
    killed = subprocess.run([sys.executable, "-c", code, f"sqlite://{path}"], capture_output=True, text=True,
                            timeout=60, check=False,
                            env={**env, "GRANTKEEPER_FAILPOINTS": "private_file_written=kill"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert not path.exists()
    assert not path.with_name("store.db.key").exists()
    again = subprocess.run([sys.executable, "-c", code, f"sqlite://{path}"], capture_output=True, text=True,
                           timeout=60, check=False, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert path.with_name("store.db.key").exists()


def test_a_key_file_that_cannot_be_written_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without hard links (or an unwritable folder) stops store creation with an encryption-key
    error that says what to do, and leaves no key file and no temporary file behind."""

    def no_links(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.delenv("GRANTKEEPER_KEY", raising=False)
    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "s" / "store.db"
    with pytest.raises(EncryptionKeyError, match=r"cannot create the new store's key file .*GRANTKEEPER_KEY"):
        open_store(f"sqlite://{path}")
    assert not path.with_name("store.db.key").exists()
    assert not list(path.parent.glob("*.tmp"))
