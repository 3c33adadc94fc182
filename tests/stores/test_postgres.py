"""PostgreSQL-specific promises: explicit migrations, keys, encryption at rest, reconnects, notifications, and the
round trips of the refresh transactions; each store-level promise on both faces (blocking and native async)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

from grantkeeper import EncryptionKeyError, Keeper, Provider, Secret, StoreFormatError, StoreUnavailable
from grantkeeper.cli.main import cli
from grantkeeper.model.claims import GrantUpdate
from grantkeeper.stores import open_store
from grantkeeper.stores.migrations import latest_version
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, add_grant
from tests.pg_roundtrips import counted
from tests.store_faces import store_face

pytestmark = pytest.mark.postgres
FACES = ("sync", "async")
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


@pytest.mark.parametrize("face", FACES)
def test_empty_database_needs_explicit_migrate(pg_url: str, keyed: None, face: str) -> None:
    """Opening an empty database is refused with the migrate command; nothing is created implicitly."""
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"), store_face(pg_url, face):
        pass
    assert _tables(pg_url) == set()
    with store_face(pg_url, face, migrate=True) as store:
        assert store.schema_version() == latest_version("postgres")
    assert {"grants", "leases", "attempts", "providers", "meta"} <= _tables(pg_url)


@pytest.mark.parametrize("face", FACES)
def test_newer_schema_is_refused_and_untouched(pg_url: str, keyed: None, face: str) -> None:
    """A database written by a newer grantkeeper is refused, even with migrate, and left as it is."""
    open_store(pg_url, migrate=True).close()
    newer = str(latest_version("postgres") + 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s::bytea WHERE key = 'schema_version'", (newer.encode(),))
    with pytest.raises(StoreFormatError, match="upgrade grantkeeper"), store_face(pg_url, face, migrate=True):
        pass
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


@pytest.mark.parametrize("face", FACES)
def test_wrong_or_missing_key(pg_url: str, keyed: None, monkeypatch: pytest.MonkeyPatch, face: str) -> None:
    """Another key is refused before anything is read; no key at all names the variable to set."""
    open_store(pg_url, migrate=True).close()
    monkeypatch.setenv("GRANTKEEPER_KEY", "B" * 43)
    with pytest.raises(EncryptionKeyError, match="different key"), store_face(pg_url, face):
        pass
    monkeypatch.delenv("GRANTKEEPER_KEY")
    with pytest.raises(EncryptionKeyError, match="GRANTKEEPER_KEY"), store_face(pg_url, face):
        pass


@pytest.mark.parametrize("face", FACES)
def test_no_plaintext_secret_in_the_database(pg_url: str, keyed: None, face: str) -> None:
    """Tokens and client secrets are ciphertext in every table (checked over the rows' text form)."""
    with store_face(pg_url, face, migrate=True) as store:
        store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",
                                    client_secret=Secret(CLIENT_SECRET)), now=1.0)  # fmt: skip
        store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=1.0)
    with psycopg.connect(pg_url) as conn:
        text = "".join(
            conn.execute(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t").fetchone()[0]
            for table in ("grants", "providers", "attempts", "leases", "meta")
        )
    assert REFRESH not in text and CLIENT_SECRET not in text
    assert REFRESH.encode().hex() not in text


@pytest.mark.parametrize("face", FACES)
def test_reads_survive_dropped_connections(pg_url: str, keyed: None, face: str) -> None:
    """When the server drops every pooled connection, the next read reconnects by itself."""
    with store_face(pg_url, face, migrate=True) as store:
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


def _claimed(store: object, name: str = "g") -> object:
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",  # type: ignore[attr-defined]
                                client_secret=Secret("s")), now=1.0)  # fmt: skip
    store.import_grant(name, provider="p", refresh_token=Secret(REFRESH), scopes=(), now=1.0)  # type: ignore[attr-defined]
    return store.claim(name, worker="w", lease_ttl=30.0, now=time.time(), force=True, seen_generation=None)  # type: ignore[attr-defined]


UPDATE = GrantUpdate(refresh_token=Secret("refresh-token-new-000000000002"), scopes=None,
                     access_token=Secret("access-token-new-0000000000002"), expires_at=time.time() + 3600)  # fmt: skip


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(("pipelined", "claim_trips", "commit_trips"), [(True, 4, 2), (False, 6, 6)])
def test_round_trips_of_the_claim_and_the_commit(
    pg_url: str, keyed: None, face: str, pipelined: bool, claim_trips: int, commit_trips: int
) -> None:
    """Pipelined, a claim costs 4 round trips and a commit 2 (the lease write, the attempts update, the release,
    NOTIFY and the COMMIT travel with other statements; after the grant's row lock, its lease and its earlier
    attempts are read in one statement); statement by statement, 6 and 6. Counted on the wire."""
    open_store(pg_url, migrate=True).close()
    with counted(pg_url) as (counter, url), store_face(url, face) as store:
        (store.store if face == "async" else store).pipelined = pipelined
        _claimed(store, "warm")  # opens the pool's connection and the liveness session
        store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",
                                    client_secret=Secret("s")), now=1.0)  # fmt: skip
        store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=1.0)
        counter.reset()
        claim = store.claim("g", worker="w", lease_ttl=30.0, now=time.time(), force=True, seen_generation=None)
        assert counter.turns == claim_trips
        counter.reset()
        committed = store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=UPDATE,
                                 now=time.time())  # fmt: skip
        assert counter.turns == commit_trips
        assert committed.generation == 2 and store.get_grant("g").refresh_token == UPDATE.refresh_token


@pytest.mark.parametrize("face", FACES)
def test_a_failure_in_a_statement_sent_ahead_undoes_the_whole_commit(pg_url: str, keyed: None, face: str) -> None:
    """The lease release travels pipelined with later statements (its result is not awaited): when it fails, the
    commit still fails as a whole, before it returns: the new generation, the closed attempt and the released lease
    are all rolled back, and the error is a typed store error."""
    open_store(pg_url, migrate=True).close()
    with store_face(pg_url, face) as store:
        claim = _claimed(store)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$")  # fmt: skip
            admin.execute("CREATE TRIGGER refuse BEFORE UPDATE ON leases FOR EACH ROW EXECUTE FUNCTION refuse()")
        with pytest.raises(StoreUnavailable, match="refused by the test"):
            store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=UPDATE,  # type: ignore[attr-defined]
                         now=time.time())  # fmt: skip
        grant = store.get_grant("g")
        assert grant.generation == 1 and grant.refresh_token == Secret(REFRESH)
        assert store.list_attempts("g")[0].state.value == "open"
        assert store.lease_holder("g", now=time.time()) is not None


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
