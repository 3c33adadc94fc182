"""The SQLite store's file-level promises: format checks, keys, encryption at rest, migrations."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from grantkeeper import ConfigurationError, EncryptionKeyError, Provider, Secret, StoreFormatError
from grantkeeper.stores import GrantUpdate, open_store
from tests.helpers import files_bytes

T0 = 1_800_000_000.0
REFRESH = "refresh-token-plaintext-AAAAAAAAAAAAAAAA"
ACCESS = "access-token-plaintext-BBBBBBBBBBBBBBBBBB"
CLIENT_SECRET = "client-secret-plaintext-CCCCCCCCCCCCCCC"


def _populate(url: str) -> None:
    store = open_store(url)
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret(CLIENT_SECRET)), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=T0)
    claim = store.claim("g", worker="w", lease_ttl=30, now=T0, force=False, seen_generation=1)
    assert claim.lease is not None and claim.attempt is not None
    update = GrantUpdate(refresh_token=Secret(REFRESH + "-next"), access_token=Secret(ACCESS), expires_at=T0 + 60,
                         scopes=None)  # fmt: skip
    store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=update, now=T0)
    store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=update, now=T0)
    store.close()


def test_no_plaintext_secret_in_any_file(tmp_path: Path) -> None:
    """Database, WAL, shared memory, key and recovery files hold no token or client secret in plaintext."""
    url = f"sqlite://{tmp_path}/s.db"
    store = open_store(url)
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret(CLIENT_SECRET)), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=T0)
    claim = store.claim("g", worker="w", lease_ttl=30, now=T0, force=False, seen_generation=1)
    update = GrantUpdate(refresh_token=Secret(REFRESH + "-next"), access_token=Secret(ACCESS), expires_at=T0 + 60,
                         scopes=None)  # fmt: skip
    store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=update, now=T0)  # type: ignore[union-attr]
    # Checked while the WAL still holds the writes (store open), then after checkpoint on close.
    for _ in range(2):
        data = files_bytes(tmp_path)
        assert list(tmp_path.glob("s.db.recovery/*.gkr")), "recovery file expected"
        for secret in (REFRESH, ACCESS, CLIENT_SECRET):
            assert secret.encode() not in data
        store.close()


def test_key_file_is_private(tmp_path: Path) -> None:
    """The key file created with a new store is readable by its owner only."""
    open_store(f"sqlite://{tmp_path}/s.db").close()
    assert stat.S_IMODE((tmp_path / "s.db.key").stat().st_mode) == 0o600


def test_wrong_key_is_refused_before_anything_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a store with another key fails with EncryptionKeyError, never garbage or plaintext."""
    _populate(f"sqlite://{tmp_path}/s.db")
    monkeypatch.setenv("GRANTKEEPER_KEY", "A" * 43)
    with pytest.raises(EncryptionKeyError, match="different key"):
        open_store(f"sqlite://{tmp_path}/s.db")


def test_missing_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    """An existing store whose key file is gone is refused; no new key is made for it."""
    _populate(f"sqlite://{tmp_path}/s.db")
    (tmp_path / "s.db.key").unlink()
    with pytest.raises(EncryptionKeyError, match="does not exist"):
        open_store(f"sqlite://{tmp_path}/s.db")
    assert not (tmp_path / "s.db.key").exists()


def test_tampered_ciphertext_is_rejected_and_state_unchanged(tmp_path: Path) -> None:
    """A flipped byte in a stored token fails authentication; the row is not rewritten."""
    _populate(f"sqlite://{tmp_path}/s.db")
    raw = sqlite3.connect(tmp_path / "s.db")
    blob = bytearray(raw.execute("SELECT refresh_token FROM grants").fetchone()[0])
    blob[-1] ^= 1
    raw.execute("UPDATE grants SET refresh_token = ?", (bytes(blob),))
    raw.commit()
    store = open_store(f"sqlite://{tmp_path}/s.db")
    with pytest.raises(StoreFormatError, match="failed authentication"):
        store.get_grant("g")
    store.close()
    assert raw.execute("SELECT refresh_token FROM grants").fetchone()[0] == bytes(blob)


def test_ciphertext_moved_between_rows_is_rejected(tmp_path: Path) -> None:
    """A ciphertext copied into another grant's row does not decrypt as that grant's token."""
    url = f"sqlite://{tmp_path}/s.db"
    _populate(url)
    store = open_store(url)
    store.import_grant("h", provider="p", refresh_token=Secret("another-refresh-token-xxxxxx"), scopes=(), now=T0)
    store.close()
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("UPDATE grants SET refresh_token = (SELECT refresh_token FROM grants WHERE name = 'g') "
                "WHERE name = 'h'")  # fmt: skip
    raw.commit()
    store = open_store(url)
    with pytest.raises(StoreFormatError):
        store.get_grant("h")
    store.close()


def test_not_a_database_is_a_format_error(tmp_path: Path) -> None:
    """A file that is not SQLite gets a clear StoreFormatError, and is left as it was."""
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database at all" * 100)
    (tmp_path / "s.db.key").write_text("A" * 43)
    (tmp_path / "s.db.key").chmod(0o600)
    with pytest.raises(StoreFormatError, match="not a readable SQLite database"):
        open_store(f"sqlite://{path}")
    assert path.read_bytes() == b"this is not a database at all" * 100


def test_foreign_sqlite_database_is_not_touched(tmp_path: Path) -> None:
    """Another application's SQLite database is refused, not migrated into."""
    path = tmp_path / "s.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE customers (id INTEGER)")
    other.commit()
    other.close()
    (tmp_path / "s.db.key").write_text("A" * 43)
    (tmp_path / "s.db.key").chmod(0o600)
    with pytest.raises(StoreFormatError, match="not a grantkeeper store"):
        open_store(f"sqlite://{path}")
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("customers",)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer grantkeeper is refused with advice to upgrade."""
    _populate(f"sqlite://{tmp_path}/s.db")
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    with pytest.raises(StoreFormatError, match="upgrade grantkeeper"):
        open_store(f"sqlite://{tmp_path}/s.db")


def test_older_schema_asks_for_migrate(tmp_path: Path) -> None:
    """A store at an older schema version is refused with the migrate command, and left unchanged."""
    _populate(f"sqlite://{tmp_path}/s.db")
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("PRAGMA user_version = 0")
    raw.commit()
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(f"sqlite://{tmp_path}/s.db")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0


def test_unsupported_url_scheme(tmp_path: Path) -> None:
    """A store URL with an unknown scheme says which schemes exist."""
    with pytest.raises(ConfigurationError, match="sqlite:///"):
        open_store(f"mysql://{tmp_path}/x")


def test_wal_and_full_sync(tmp_path: Path) -> None:
    """The store runs in WAL mode with synchronous=FULL (durable commits)."""
    store = open_store(f"sqlite://{tmp_path}/s.db")
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()


def test_the_schedulers_queries_read_the_due_index_without_statistics(tmp_path: Path) -> None:
    """The scheduler asks for due grants every round. On a store no ANALYZE ever ran on (every store until an
    operator runs one), SQLite's planner would read them through the index on ``state``: every active grant and a
    sort, each round, a full scan at a million grants. Both scheduler queries read the partial due index in order."""
    store = open_store(f"sqlite://{tmp_path}/s.db")
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid"), now=T0)
    for i in range(20):
        store.import_grant(f"g{i}", provider="p", refresh_token=Secret(f"{REFRESH}-{i}"), scopes=(), now=T0)
    seen: list[str] = []
    conn = store._conn()  # type: ignore[attr-defined]
    conn.set_trace_callback(seen.append)
    try:
        assert len(store.take_due(now=T0 + 1, hold=60, limit=5)) == 5
        assert len(store.schedule(limit=3)) == 3
    finally:
        conn.set_trace_callback(None)
    queries = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT") and "next_due_at" in sql]
    assert len(queries) == 2, seen
    for sql in queries:
        plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX grants_next_due" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() == (0,)
    store.close()
