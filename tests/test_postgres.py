"""PostgreSQL-specific promises: explicit migrations, keys, encryption at rest, reconnects, notifications."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

from grantkeeper import EncryptionKeyError, Keeper, Provider, Secret, StoreFormatError
from grantkeeper.cli.main import cli
from grantkeeper.stores import open_store
from grantkeeper.stores.migrations import latest_version
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, add_grant

pytestmark = pytest.mark.postgres
Sim = Callable[..., object]
REFRESH = "refresh-token-plaintext-PPPPPPPPPPPPPPPPPP"
CLIENT_SECRET = "client-secret-plaintext-QQQQQQQQQQQQQQQ"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", f"{tmp_path}/recovery")


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return {r[0] for r in rows}


def test_empty_database_needs_explicit_migrate(pg_url: str, keyed: None) -> None:
    """Opening an empty database is refused with the migrate command; nothing is created implicitly."""
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(pg_url)
    assert _tables(pg_url) == set()
    store = open_store(pg_url, migrate=True)
    assert store.schema_version() == latest_version("postgres")
    store.close()
    assert {"grants", "leases", "attempts", "providers", "meta"} <= _tables(pg_url)


def test_newer_schema_is_refused_and_untouched(pg_url: str, keyed: None) -> None:
    """A database written by a newer grantkeeper is refused, even with migrate, and left as it is."""
    open_store(pg_url, migrate=True).close()
    newer = str(latest_version("postgres") + 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s::bytea WHERE key = 'schema_version'", (newer.encode(),))
    with pytest.raises(StoreFormatError, match="upgrade grantkeeper"):
        open_store(pg_url, migrate=True)
    with psycopg.connect(pg_url) as conn:
        stored = bytes(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    assert stored == newer.encode()


def test_foreign_tables_are_not_migrated_into(pg_url: str, keyed: None) -> None:
    """A database with someone else's 'grants' table is refused; grantkeeper creates nothing in it."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE grants (id int)")
    with pytest.raises(StoreFormatError, match="did not create"):
        open_store(pg_url, migrate=True)
    assert _tables(pg_url) == {"grants"}


def test_wrong_or_missing_key(pg_url: str, keyed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another key is refused before anything is read; no key at all names the variable to set."""
    open_store(pg_url, migrate=True).close()
    monkeypatch.setenv("GRANTKEEPER_KEY", "B" * 43)
    with pytest.raises(EncryptionKeyError, match="different key"):
        open_store(pg_url)
    monkeypatch.delenv("GRANTKEEPER_KEY")
    with pytest.raises(EncryptionKeyError, match="GRANTKEEPER_KEY"):
        open_store(pg_url)


def test_no_plaintext_secret_in_the_database(pg_url: str, keyed: None) -> None:
    """Tokens and client secrets are ciphertext in every table (checked over the rows' text form)."""
    store = open_store(pg_url, migrate=True)
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",
                                client_secret=Secret(CLIENT_SECRET)), now=1.0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=1.0)
    store.close()
    with psycopg.connect(pg_url) as conn:
        text = "".join(
            conn.execute(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t").fetchone()[0]
            for table in ("grants", "providers", "attempts", "leases", "meta")
        )
    assert REFRESH not in text and CLIENT_SECRET not in text
    assert REFRESH.encode().hex() not in text


def test_reads_survive_dropped_connections(pg_url: str, keyed: None) -> None:
    """When the server drops every pooled connection, the next read reconnects by itself."""
    store = open_store(pg_url, migrate=True)
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",
                                client_secret=Secret("s")), now=1.0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=1.0)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert dropped >= 1
    assert store.get_grant("g").generation == 1
    store.close()


def test_cli_migrate_creates_and_reports(pg_url: str, keyed: None) -> None:
    """grantkeeper migrate creates the schema on an empty database and reports the version; again is a no-op."""
    for _ in range(2):
        result = CliRunner().invoke(cli, ["--store", pg_url, "migrate"])
        assert result.exit_code == 0, result.output
        assert f"schema version {latest_version('postgres')} (up to date)" in result.stdout


def test_waiter_is_woken_by_the_commit_notification(pg_url: str, keyed: None, make_sim: Sim) -> None:
    """A worker waiting on another worker's lease returns that worker's token once its commit is announced;
    the provider sees one call."""
    from grantkeeper.testing import Delay

    open_store(pg_url, migrate=True).close()
    sim = make_sim()
    holder = Keeper.open(pg_url, policy=FAST_POLICY, worker="host-a")
    waiter = Keeper.open(pg_url, policy=FAST_POLICY, worker="host-b")
    add_grant(holder, sim)
    sim.inject(Delay(0.5))  # type: ignore[attr-defined]
    tokens: dict[str, str] = {}
    first = threading.Thread(target=lambda: tokens.__setitem__("a", holder.access_token("g")))
    first.start()
    deadline = time.monotonic() + 30
    while sim.stats.refresh_calls == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    tokens["b"] = waiter.access_token("g")
    first.join(timeout=30)
    assert tokens["a"] == tokens["b"]
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    holder.close()
    waiter.close()
