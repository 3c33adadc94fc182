"""Attempt history: retention bounds on every store, and stores from schema version 1 upgraded in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from grantkeeper import (
    AttemptState,
    ConfigurationError,
    HistoryRetention,
    Keeper,
    OutcomeClass,
    Provider,
    ProviderUnavailable,
    Secret,
    StoreFormatError,
)
from grantkeeper.model import AttemptReport
from grantkeeper.stores import GenerationConflict, GrantUpdate, SQLStore, open_store
from grantkeeper.stores.migrations import latest_version
from grantkeeper.testing.clock import FakeClock
from grantkeeper.testing.simulator import DropAfterRotate, HttpError
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, MIGRATION_6_COLUMNS, add_grant, drop_schedule_columns

Sim = Callable[..., object]
DAY = 86400.0
T0 = 1_800_000_000.0
TTL = 30.0
V2_COLUMNS = ("actor", "try_number", "new_generation", "received_fp", "rotated", "outcome_class", "error_code",
              "error_description", "http_status", "latency", "evidence")  # fmt: skip
#: Added by schema versions 3 (provider profiles, refresh-token lifetimes), 4 (consent and revocation
#: endpoints), 5 (device authorization endpoint) and 6 (lease liveness): dropped too, to rebuild a version-1 store.
V3_COLUMNS = (("providers", "private_key_file"), ("providers", "key_id"), ("providers", "jwt_audience"),
              ("providers", "send_scope"), ("providers", "profile"), ("grants", "refresh_issued_at"),
              ("grants", "refresh_expires_at"), ("providers", "authorization_url"),
              ("providers", "revocation_url"), ("providers", "device_authorization_url"),
              *(("providers", column) for column in MIGRATION_6_COLUMNS), ("leases", "liveness"))  # fmt: skip


def test_retention_keeps_the_newest_per_grant(store_url: str, make_sim: Sim) -> None:
    sim = make_sim()
    with Keeper.open(store_url, policy=FAST_POLICY, retention=HistoryRetention(per_grant=3)) as keeper:
        add_grant(keeper, sim)
        for _ in range(6):
            keeper.refresh("g", force=True)
        assert len(keeper.history("g", limit=100)) == 6
        assert keeper.store.prune_history(now=keeper.clock.now()) == 3
        assert [a.new_generation for a in keeper.history("g", limit=100)] == [7, 6, 5]


def test_retention_bounds_a_grant_that_never_succeeds(sqlite_url: str, make_sim: Sim) -> None:
    """A provider down for a long time: failed attempts are pruned too, not only on commits."""
    sim = make_sim()
    sim.inject(HttpError(503), times=10_000)  # type: ignore[attr-defined]
    with Keeper.open(sqlite_url, policy=FAST_POLICY, retention=HistoryRetention(per_grant=5)) as keeper:
        add_grant(keeper, sim)
        for _ in range(20):
            with pytest.raises(ProviderUnavailable):
                keeper.refresh("g", force=True)
        attempts = keeper.history("g", limit=1000)
    assert sim.stats.refresh_calls == 20 * FAST_POLICY.max_tries  # type: ignore[attr-defined]
    assert len(attempts) <= 5 + 64  # pruned at least once, at the latest 64 attempts ago
    assert len(attempts) < 20 * FAST_POLICY.max_tries


def test_retention_drops_attempts_older_than_the_window(store_url: str, make_sim: Sim) -> None:
    """Attempts older than `days` are pruned, except an unresolved one (the next refresh still needs it)."""
    sim = make_sim()
    clock = FakeClock(start=1_900_000_000.0)
    with Keeper.open(store_url, policy=FAST_POLICY, clock=clock, retention=HistoryRetention(days=10)) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g", force=True)
        clock.advance(11 * DAY)
        keeper.refresh("g", force=True)
        assert keeper.store.prune_history(now=clock.now()) == 1
        assert [a.new_generation for a in keeper.history("g")] == [3]


def test_retention_is_validated_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="must keep something"):
        HistoryRetention(days=0)
    monkeypatch.setenv("GRANTKEEPER_HISTORY_DAYS", "30")
    monkeypatch.setenv("GRANTKEEPER_HISTORY_PER_GRANT", "50")
    assert HistoryRetention.from_env() == HistoryRetention(days=30, per_grant=50)
    monkeypatch.setenv("GRANTKEEPER_HISTORY_PER_GRANT", "lots")
    with pytest.raises(ConfigurationError, match="GRANTKEEPER_HISTORY_PER_GRANT must be a number"):
        HistoryRetention.from_env()


def _downgrade_sqlite(path: Path) -> None:
    """Make a store look like schema version 1 (as a grantkeeper from before the history existed left it)."""
    raw = sqlite3.connect(path)
    raw.execute("DROP INDEX attempts_by_time")
    drop_schedule_columns(raw.execute)
    for column in V2_COLUMNS:
        raw.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
    for table, column in V3_COLUMNS:
        raw.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()


def test_sqlite_store_from_version_1_is_upgraded_by_migrate(tmp_path: Path, make_sim: Sim) -> None:
    """A version-1 store is refused until `migrate`; afterwards its old attempts read with empty history fields
    and new refreshes record everything."""
    sim = make_sim()
    path = tmp_path / "old.db"
    with Keeper.open(f"sqlite://{path}", policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g", force=True)
    _downgrade_sqlite(path)
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(f"sqlite://{path}")
    open_store(f"sqlite://{path}", migrate=True).close()
    with Keeper.open(f"sqlite://{path}", policy=FAST_POLICY) as keeper:
        assert keeper.store.schema_version() == latest_version("sqlite")
        keeper.refresh("g", force=True)
        new, old = keeper.history("g")
        assert old.outcome_class is None and old.actor == "" and old.state.value == "committed"
        assert new.outcome_class is not None and new.new_generation == 3
        assert keeper.doctor("g").cause == "healthy"


def test_postgres_store_from_version_1_is_upgraded_by_migrate(
    pg_url: str, make_sim: Sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    store_url = pg_url
    open_store(store_url, migrate=True).close()
    sim = make_sim()
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g", force=True)
    with psycopg.connect(store_url, autocommit=True) as raw:
        raw.execute("DROP INDEX attempts_by_time")
        drop_schedule_columns(raw.execute)
        for column in V2_COLUMNS:
            raw.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
        for table, column in V3_COLUMNS:
            raw.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        raw.execute("UPDATE meta SET value = '1'::bytea WHERE key = 'schema_version'")
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(store_url)
    open_store(store_url, migrate=True).close()
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        keeper.refresh("g", force=True)
        assert [a.new_generation for a in keeper.history("g")] == [3, None]


def test_a_commit_prunes_its_grant_by_age_and_count(store: SQLStore) -> None:
    """Every 64th generation's commit applies retention to its grant: attempts older than `days` go, and so do
    those past the newest `per_grant`, oldest first; nothing else is touched."""
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret("client-secret-value")), now=T0)  # fmt: skip
    for name in ("g", "other"):
        store.import_grant(name, provider="p", refresh_token=Secret("refresh-token-0000000000001"), scopes=(), now=T0)

    def refresh(name: str, i: int) -> None:
        now = T0 + i * 3600.0
        claim = store.claim(name, worker="w", lease_ttl=TTL, now=now, force=True, seen_generation=None)
        assert claim.lease is not None and claim.attempt is not None
        update = GrantUpdate(refresh_token=Secret(f"refresh-token-{name}-{i:013d}"),
                             access_token=Secret(f"access-token-{i:014d}"), expires_at=now + 3600,
                             scopes=None)  # fmt: skip
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=update, now=now)

    refresh("other", 0)
    store.retention = HistoryRetention(days=1.0, per_grant=1000)
    for i in range(62):  # generations 2 .. 63: no prune yet
        refresh("g", i)
    assert len(store.list_attempts("g", limit=1000)) == 62
    refresh("g", 62)  # generation 64, at T0 + 62 h: the attempts started before T0 + 38 h (generations 2-39) go
    kept = store.list_attempts("g", limit=1000)
    assert [a.new_generation for a in kept] == list(range(64, 39, -1))
    assert len(store.list_attempts("other", limit=1000)) == 1  # another grant's history waits for its own commits
    store.retention = HistoryRetention(days=1000.0, per_grant=10)
    for i in range(63, 127):  # generation 128 prunes by count
        refresh("g", i)
    assert [a.new_generation for a in store.list_attempts("g", limit=1000)] == list(range(128, 118, -1))


def test_pruning_never_drops_the_unresolved_attempt_and_deferrals_are_not_resends(store: SQLStore) -> None:
    """A worker dies holding an open attempt; 70 other workers' claims pile up deferred (not sent) attempts
    behind it, far past the retention count. The open attempt survives every prune, so the next claim still re-sends
    it instead of spending the token as fresh; and deferred attempts never count as re-sends when a later
    invalid_grant is explained (a multi-host crash test lost grants to both before this)."""
    store.retention = HistoryRetention(per_grant=2)
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret("client-secret-value")), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-0000000000001"), scopes=(), now=T0)
    crashed = store.claim("g", worker="dead", lease_ttl=TTL, now=T0, force=True, seen_generation=None).attempt
    assert crashed is not None
    for i in range(70):  # attempt ids pass a multiple of the prune interval
        claim = store.claim("g", worker=f"w{i}", lease_ttl=TTL, now=T0 + TTL + i, force=True, seen_generation=None)
        assert claim.lease is not None and claim.attempt is not None and claim.prior == crashed
        store.finish(claim.lease, attempt_id=claim.attempt.id, state=AttemptState.NOT_SENT, outcome="deferred",
                     now=T0 + TTL + i, report=AttemptReport(OutcomeClass.DEFERRED))  # fmt: skip
    assert store.get_attempt("g", crashed.id) is not None
    assert len(store.list_attempts("g", limit=1000)) < 70
    claim = store.claim("g", worker="w3", lease_ttl=TTL, now=T0 + 200, force=True, seen_generation=None)
    assert claim.prior == crashed and claim.recent_resend is None


def test_one_workers_deferrals_behind_one_attempt_are_one_row(store: SQLStore) -> None:
    """A worker asked again and again while another's possibly-spent attempt may still commit leaves one
    deferred row per prior attempt, counting the deferrals, with the latest time; another worker gets its own;
    and the grant's last error is kept current."""
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret("client-secret-value")), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-0000000000001"), scopes=(), now=T0)
    crashed = store.claim("g", worker="dead", lease_ttl=TTL, now=T0, force=True, seen_generation=None).attempt
    assert crashed is not None

    def defer(worker: str, at: float) -> None:
        claim = store.claim("g", worker=worker, lease_ttl=TTL, now=at, force=True, seen_generation=None)
        assert claim.lease is not None and claim.attempt is not None and claim.prior == crashed
        store.finish(claim.lease, attempt_id=claim.attempt.id, state=AttemptState.NOT_SENT,
                     outcome=f"deferred: attempt {crashed.id} may still commit", now=at,
                     report=AttemptReport(OutcomeClass.DEFERRED, evidence={"prior_attempt": crashed.id}))  # fmt: skip

    for i in range(25):
        defer("patient", T0 + TTL + i)
    defer("other", T0 + TTL + 30)
    defer("patient", T0 + TTL + 40)
    rows = store.list_attempts("g", limit=1000)
    assert [(a.worker, a.resend_of) for a in rows] == [("other", crashed.id), ("patient", crashed.id),
                                                       ("dead", None)]  # fmt: skip
    other, patient, _ = rows
    assert patient.evidence == {"prior_attempt": crashed.id, "deferrals": 26}
    assert patient.finished_at == T0 + TTL + 40 and patient.started_at == T0 + TTL
    assert other.evidence == {"prior_attempt": crashed.id}
    assert store.get_grant("g").last_error_at == T0 + TTL + 40
    assert store.get_attempt("g", crashed.id) == crashed


def test_a_grant_deleted_and_created_again_starts_above_the_old_one(store: SQLStore) -> None:
    """A worker still refreshing a deleted grant cannot commit over a new grant of the same name, nor free its
    lease: generation and fence carry on past the deleted grant's; its recovery entries go with it."""
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret("client-secret-value")), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-old-consent-1"), scopes=(), now=T0)
    old = store.claim("g", worker="old", lease_ttl=TTL, now=T0, force=True, seen_generation=None)
    assert old.lease is not None and old.attempt is not None
    store.delete_grant("g")
    fresh = store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-new-consent-1"), scopes=(),
                               now=T0 + 1)  # fmt: skip
    assert fresh.generation == 2
    update = GrantUpdate(refresh_token=Secret("refresh-token-old-consent-2"), access_token=Secret("access-old-1"),
                         expires_at=T0 + 3600, scopes=None)  # fmt: skip
    with pytest.raises(GenerationConflict):
        store.commit(old.lease, attempt_id=old.attempt.id, base=old.grant, update=update, now=T0 + 2)
    new = store.claim("g", worker="new", lease_ttl=TTL, now=T0 + 2, force=True, seen_generation=None)
    assert new.lease is not None and new.lease.fence > old.lease.fence
    store.release(old.lease)  # the old holder's release must not free the new holder's lease
    holder = store.lease_holder("g", now=T0 + 3)
    assert holder is not None and holder.worker == "new"
    assert store.get_grant("g").refresh_token == Secret("refresh-token-new-consent-1")


def test_delete_only_at_the_expected_generation(store: SQLStore) -> None:
    store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="cid",
                                client_secret=Secret("client-secret-value")), now=T0)  # fmt: skip
    store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-0000000000001"), scopes=(), now=T0)
    store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-0000000000002"), scopes=(), now=T0)
    with pytest.raises(GenerationConflict):
        store.delete_grant("g", expected_generation=1)
    assert store.get_grant("g").generation == 2
    store.delete_grant("g", expected_generation=2)
    assert store.list_grants() == []


def test_pruning_keeps_the_resends_that_explain_a_revocation(store_url: str, make_sim: Sim) -> None:
    """A sent re-send of the last two generations survives any retention count: a later invalid_grant needs it
    to be diagnosed reuse_detected instead of revoked_or_expired."""
    sim = make_sim(reuse_grace=30)
    with Keeper.open(store_url, policy=FAST_POLICY, retention=HistoryRetention(per_grant=1)) as keeper:
        add_grant(keeper, sim, grace=30)
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        keeper.refresh("g", force=True)  # ambiguous, then a re-send inside the grace commits generation 2
        resend = next(a for a in keeper.history("g") if a.resend_of is not None)
        keeper.store.prune_history(now=keeper.clock.now())
        assert keeper.store.get_attempt("g", resend.id) is not None
