"""Store conformance: every store kind, blocking and asyncio, keeps the contract in engine/ports.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AttemptState, GrantState, Provider, Secret, UnknownGrant, UnknownProvider
from grantkeeper.stores import GenerationConflict, GrantUpdate, LeaseLost, SQLiteStore
from tests.conftest import _store_of_kind
from tests.store_faces import FACE_IDS, FACES, store_face

T0 = 1_800_000_000.0
TTL = 30.0


@pytest.fixture(params=FACES, ids=FACE_IDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Every test here runs on memory, SQLite and PostgreSQL, blocking, and on SQLite (in threads) and PostgreSQL
    (native) through their asyncio face."""
    kind, face = request.param
    with store_face(_store_of_kind(kind, request, tmp_path, monkeypatch), face) as opened:
        yield opened


def _provider(store: SQLiteStore, **options: object) -> Provider:
    provider = Provider(name="p", token_url="https://as.example/token", client_id="cid",
                        client_secret=Secret("client-secret-value"), **options)  # type: ignore[arg-type]  # fmt: skip
    store.put_provider(provider, now=T0)
    return provider


def _grant(store: SQLiteStore, name: str = "g", token: str = "refresh-token-0000000000001") -> None:
    _provider(store)
    store.import_grant(name, provider="p", refresh_token=Secret(token), scopes=("read",), now=T0)


def _update(n: int, *, refresh: bool = True, expires_at: float = T0 + 3600) -> GrantUpdate:
    return GrantUpdate(
        refresh_token=Secret(f"refresh-token-{n:013d}") if refresh else None,
        access_token=Secret(f"access-token-{n:014d}"),
        expires_at=expires_at,
        scopes=None,
    )


def _claim(store: SQLiteStore, *, worker: str = "w1", now: float = T0, force: bool = False, seen: int = 1):  # type: ignore[no-untyped-def]
    return store.claim("g", worker=worker, lease_ttl=TTL, now=now, force=force, seen_generation=seen)


class TestConfiguration:
    def test_provider_round_trip_keeps_secret(self, store: SQLiteStore) -> None:
        """A stored provider reads back equal, client secret included."""
        provider = _provider(store, reuse_grace=5.0)
        assert store.get_provider("p") == provider

    def test_provider_endpoints_round_trip(self, store: SQLiteStore) -> None:
        """The authorization and revocation endpoints are stored, and cleared when updated to None."""
        provider = _provider(store, authorization_url="https://as.example/authorize",
                             revocation_url="https://as.example/revoke")  # fmt: skip
        assert store.get_provider("p") == provider
        assert _provider(store) == store.get_provider("p")
        assert store.get_provider("p").revocation_url is None

    def test_unknown_provider_is_typed(self, store: SQLiteStore) -> None:
        """Importing a grant for a provider that does not exist names the fix."""
        with pytest.raises(UnknownProvider, match="provider add"):
            store.import_grant("g", provider="nope", refresh_token=Secret("x" * 30), scopes=(), now=T0)

    def test_unknown_grant_is_typed(self, store: SQLiteStore) -> None:
        """Reading a grant that does not exist names the fix."""
        with pytest.raises(UnknownGrant, match="grant import"):
            store.get_grant("nope")

    def test_import_starts_at_generation_one(self, store: SQLiteStore) -> None:
        """A new grant is active at generation 1 with no access token."""
        _grant(store)
        grant = store.get_grant("g")
        assert (grant.generation, grant.state, grant.access_token) == (1, GrantState.ACTIVE, None)
        assert grant.refresh_token == Secret("refresh-token-0000000000001")

    def test_reimport_advances_generation_and_revives(self, store: SQLiteStore) -> None:
        """Re-importing (after re-consent) never moves generation back and makes the grant active."""
        _grant(store)
        lease = _claim(store).lease
        store.finish(lease, attempt_id=1, state=AttemptState.DEAD, outcome="revoked_or_expired", now=T0,
                     mark_dead=True)  # fmt: skip
        assert store.get_grant("g").state is GrantState.NEEDS_REAUTH
        store.import_grant("g", provider="p", refresh_token=Secret("refresh-token-new-000000001"), scopes=(), now=T0)
        grant = store.get_grant("g")
        assert (grant.generation, grant.state) == (2, GrantState.ACTIVE)


class TestClaim:
    def test_claim_takes_lease_and_records_attempt(self, store: SQLiteStore) -> None:
        """Claiming a grant that needs a refresh takes a fenced lease and an open attempt in one step."""
        _grant(store)
        claim = _claim(store)
        assert claim.lease is not None and claim.lease.fence == 1
        assert claim.attempt is not None and claim.attempt.state is AttemptState.OPEN
        assert claim.attempt.refresh_fp == store.get_grant("g").refresh_fp
        assert [a.id for a in store.list_attempts("g")] == [claim.attempt.id]

    def test_second_worker_sees_holder_and_writes_nothing(self, store: SQLiteStore) -> None:
        """While a lease is valid another worker gets the holder, not a lease, and no attempt is recorded."""
        _grant(store)
        first = _claim(store)
        second = _claim(store, worker="w2", now=T0 + 1)
        assert second.lease is None and second.holder is not None
        assert (second.holder.worker, second.holder.fence) == ("w1", first.lease.fence)  # type: ignore[union-attr]
        assert len(store.list_attempts("g")) == 1

    def test_expired_lease_is_taken_with_higher_fence_and_prior_found(self, store: SQLiteStore) -> None:
        """After a holder dies its lease expires; the next claim has a higher fence and re-sends its attempt,
        which the commit of that generation closes as abandoned."""
        _grant(store)
        first = _claim(store)
        second = _claim(store, worker="w2", now=T0 + TTL + 1)
        assert second.lease is not None and second.lease.fence == first.lease.fence + 1  # type: ignore[union-attr]
        assert second.prior is not None and second.prior.id == first.attempt.id  # type: ignore[union-attr]
        assert second.attempt is not None and second.attempt.resend_of == first.attempt.id  # type: ignore[union-attr]
        store.commit(second.lease, attempt_id=second.attempt.id, base=second.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        states = {a.id: a.state for a in store.list_attempts("g")}
        assert states[first.attempt.id] is AttemptState.ABANDONED  # type: ignore[union-attr]

    def test_claim_reports_the_unresolved_attempt_and_the_latest_sent_resend(self, store: SQLiteStore) -> None:
        """What a claim reads about earlier attempts (SQLite reads it in the same statement as the grant): the
        newest maybe-spent attempt of this generation and token as `prior`, and the newest re-send that was sent
        (not one that never left) as `recent_resend`."""
        _grant(store)
        seen: list[tuple[int | None, int | None]] = []
        states = (AttemptState.AMBIGUOUS, AttemptState.REJECTED, AttemptState.NOT_SENT, AttemptState.REJECTED)
        ids = []
        for i, state in enumerate(states):
            claim = _claim(store, worker=f"w{i}", force=True, now=T0 + i)
            seen.append((claim.prior.id if claim.prior else None,
                         claim.recent_resend.id if claim.recent_resend else None))  # fmt: skip
            ids.append(claim.attempt.id)  # type: ignore[union-attr]
            store.finish(claim.lease, attempt_id=claim.attempt.id, state=state, outcome=state.value, now=T0 + i)  # type: ignore[arg-type, union-attr]
        last = _claim(store, worker="w9", force=True, now=T0 + 9)
        seen.append((last.prior.id if last.prior else None, last.recent_resend.id if last.recent_resend else None))
        # ids[0] stays ambiguous: every later claim re-sends it; ids[1] and ids[3] are sent re-sends, ids[2] never left.
        assert seen == [(None, None), (ids[0], None), (ids[0], ids[1]), (ids[0], ids[1]), (ids[0], ids[3])]

    def test_claim_prefers_a_stale_send_to_a_newer_resend(self, store: SQLiteStore) -> None:
        """A stale send (a certain second use of a token) explains a later revocation better than a re-send (a
        possible one), so the claim reports it even when a sent re-send is newer."""
        _grant(store)
        stale = _claim(store, force=True)
        store.finish(stale.lease, attempt_id=stale.attempt.id, state=AttemptState.REJECTED,  # type: ignore[arg-type, union-attr]
                     outcome="stale_local_token", now=T0)  # fmt: skip
        for i, state in enumerate((AttemptState.AMBIGUOUS, AttemptState.REJECTED), start=1):
            claim = _claim(store, worker=f"w{i}", force=True, now=T0 + i)
            store.finish(claim.lease, attempt_id=claim.attempt.id, state=state, outcome=state.value, now=T0 + i)  # type: ignore[arg-type, union-attr]
        later = _claim(store, worker="w9", force=True, now=T0 + 9)
        assert later.recent_resend is not None and later.recent_resend.id == stale.attempt.id  # type: ignore[union-attr]
        assert later.recent_resend.outcome == "stale_local_token"

    def test_usable_access_token_needs_no_claim(self, store: SQLiteStore) -> None:
        """A grant whose access token is valid beyond the skew is returned without a lease."""
        _grant(store)
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        again = _claim(store, worker="w2", seen=1)
        assert again.lease is None and again.holder is None and again.grant.generation == 2

    def test_force_claims_only_if_nobody_refreshed_since(self, store: SQLiteStore) -> None:
        """force refreshes the generation the caller saw; a newer generation already satisfies it."""
        _grant(store)
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        assert _claim(store, force=True, seen=1).lease is None
        assert _claim(store, force=True, seen=2).lease is not None

    def test_same_worker_reclaims_its_own_leftover_lease(self, store: SQLiteStore) -> None:
        """A worker whose commit failed can claim again without waiting for its own lease to expire."""
        _grant(store)
        _claim(store)
        assert _claim(store, now=T0 + 1).lease is not None


class TestCommit:
    def test_commit_advances_generation_by_exactly_one(self, store: SQLiteStore) -> None:
        """Commit writes generation+1, the new tokens, closes the attempt and releases the lease."""
        _grant(store)
        claim = _claim(store)
        grant = store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        stored = store.get_grant("g")
        assert grant.generation == stored.generation == 2
        assert stored.refresh_token == _update(1).refresh_token
        assert stored.access_token == _update(1).access_token
        assert store.list_attempts("g")[0].state is AttemptState.COMMITTED
        assert store.lease_holder("g", now=T0) is None

    def test_commit_without_refresh_token_keeps_current(self, store: SQLiteStore) -> None:
        """A response without a refresh token keeps the current one; generation still advances."""
        _grant(store)
        before = store.get_grant("g")
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant,  # type: ignore[arg-type, union-attr]
                     update=_update(1, refresh=False), now=T0)  # fmt: skip
        after = store.get_grant("g")
        assert after.refresh_token == before.refresh_token and after.refresh_fp == before.refresh_fp
        assert after.generation == 2

    def test_stale_writer_cannot_overwrite(self, store: SQLiteStore) -> None:
        """A commit expecting an old generation is refused and changes nothing (compare-and-set)."""
        _grant(store)
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        with pytest.raises(GenerationConflict):
            store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(2), now=T0)  # type: ignore[arg-type, union-attr]
        assert store.get_grant("g").access_token == _update(1).access_token

    def test_lost_lease_cannot_record_attempts(self, store: SQLiteStore) -> None:
        """A holder whose lease was taken over cannot record another attempt (fencing)."""
        _grant(store)
        old = _claim(store).lease
        _claim(store, worker="w2", now=T0 + TTL + 1)
        with pytest.raises(LeaseLost):
            store.record_attempt(old, generation=1, refresh_fp="fp_x", resend_of=None, lease_ttl=TTL, now=T0 + TTL + 2)  # type: ignore[arg-type]

    def test_release_needs_matching_fence(self, store: SQLiteStore) -> None:
        """Releasing an old fence does not release the current holder's lease."""
        _grant(store)
        old = _claim(store).lease
        _claim(store, worker="w2", now=T0 + TTL + 1)
        store.release(old)  # type: ignore[arg-type]
        holder = store.lease_holder("g", now=T0 + TTL + 2)
        assert holder is not None and holder.worker == "w2"

    def test_mark_dead_applies_only_to_the_spent_generation(self, store: SQLiteStore) -> None:
        """An attempt of an older generation cannot mark a newer, healthy generation dead."""
        _grant(store)
        first = _claim(store)
        second = _claim(store, worker="w2", now=T0 + TTL + 1)
        store.commit(second.lease, attempt_id=second.attempt.id, base=second.grant, update=_update(1),  # type: ignore[arg-type, union-attr]
                     now=T0 + TTL + 1)  # fmt: skip
        store.finish(first.lease, attempt_id=first.attempt.id, state=AttemptState.DEAD, outcome="x",  # type: ignore[arg-type, union-attr]
                     now=T0 + TTL + 2, mark_dead=True)  # fmt: skip
        assert store.get_grant("g").state is GrantState.ACTIVE

    def test_served_access_reads_only_a_token_to_serve(self, store: SQLiteStore) -> None:
        """The cold read gives the access token with its generation and expiry while it is valid beyond the skew,
        and None where there is nothing to serve: no token yet, no such grant, due, expired, reported, dead."""
        _grant(store)
        assert store.served_access("g", T0) is None  # imported without an access token
        assert store.served_access("nope", T0) is None
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        until = store.get_grant("g").usable_until(store.get_provider("p").skew)
        served = store.served_access("g", T0 + 10)
        assert served is not None
        assert (served.access_token, served.generation, served.expires_at) == (_update(1).access_token, 2, T0 + 3600)
        assert served.serve_until == until
        assert store.served_access("g", until - 0.001) is not None
        assert store.served_access("g", until) is None  # due: the refresh path takes it from here
        assert store.served_access("g", T0 + 3601) is None
        assert store.invalidate_access("g", access_fp=store.fingerprint(_update(1).access_token))
        assert store.served_access("g", T0 + 10) is None
        claim = _claim(store, now=T0 + 20, seen=2)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(2), now=T0 + 20)  # type: ignore[arg-type, union-attr]
        assert store.served_access("g", T0 + 30) is not None
        claim = _claim(store, now=T0 + 40, force=True, seen=3)
        store.finish(claim.lease, attempt_id=claim.attempt.id, state=AttemptState.DEAD,  # type: ignore[arg-type, union-attr]
                     outcome="revoked_or_expired", now=T0 + 40, mark_dead=True)  # fmt: skip
        assert store.get_grant("g").access_token is not None  # kept, but a dead grant serves nothing
        assert store.served_access("g", T0 + 50) is None

    def test_invalidate_access_needs_the_same_token(self, store: SQLiteStore) -> None:
        """A 401 report invalidates the stored access token only if it is the one reported."""
        _grant(store)
        claim = _claim(store)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=_update(1), now=T0)  # type: ignore[arg-type, union-attr]
        assert not store.invalidate_access("g", access_fp=store.fingerprint(Secret("other")))
        assert store.invalidate_access("g", access_fp=store.fingerprint(_update(1).access_token))
        assert store.get_grant("g").access_token is None


class TestRecovery:
    def test_claim_commits_pending_recovery_instead_of_sending(self, store: SQLiteStore) -> None:
        """A successor waiting in recovery storage is committed by the next claim; nothing is sent."""
        _grant(store)
        claim = _claim(store)
        store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=_update(1), now=T0)  # type: ignore[union-attr]
        again = _claim(store, worker="w2", now=T0 + TTL + 1)
        assert again.recovered and again.lease is None and again.grant.generation == 2
        assert store.get_grant("g").refresh_token == _update(1).refresh_token
        assert store.recovery.entries("g") == []
        assert store.list_attempts("g")[0].state is AttemptState.RECOVERED

    def test_replay_commits_current_and_drops_superseded(self, store: SQLiteStore) -> None:
        """Replay commits an entry for the current generation and discards one for a past generation."""
        _grant(store)
        claim = _claim(store)
        store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=_update(1), now=T0)  # type: ignore[union-attr]
        assert store.replay_recovery(now=T0) == ["g"]
        store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=_update(9), now=T0)  # type: ignore[union-attr]
        assert store.replay_recovery(now=T0) == []
        assert store.get_grant("g").access_token == _update(1).access_token
        assert store.recovery.entries() == []

    def test_replay_leaves_a_live_savers_lease_alone(self, store: SQLiteStore) -> None:
        """Replay frees the lease of a saver whose liveness signal is gone (a killed process:
        tests/engine/test_group_commit_crash.py), never a live holder's: it may be refreshing already."""
        _grant(store)
        claim = _claim(store)
        store.save_recovery("g", expected_generation=1, attempt_id=claim.attempt.id, update=_update(1), now=T0)  # type: ignore[union-attr]
        assert store.replay_recovery(now=T0) == ["g"]
        holder = store.lease_holder("g", now=T0)
        assert holder is not None and (holder.worker, holder.fence) == ("w1", claim.lease.fence)  # type: ignore[union-attr]


def test_due_for_refresh_lists_soonest_expiring_active_grants(store: SQLiteStore) -> None:
    """due_for_refresh returns active grants expiring before the cutoff, soonest first."""
    _provider(store)
    for n, expires in enumerate([T0 + 500, T0 + 100, T0 + 5000]):
        name = f"g{n}"
        store.import_grant(name, provider="p", refresh_token=Secret(f"refresh-token-{n:013d}"), scopes=(), now=T0)
        claim = store.claim(name, worker="w", lease_ttl=TTL, now=T0, force=False, seen_generation=None)
        store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant,  # type: ignore[arg-type, union-attr]
                     update=_update(n, expires_at=expires), now=T0)  # fmt: skip
    assert store.due_for_refresh(before=T0 + 1000) == ["g1", "g0"]
    assert store.due_for_refresh(before=T0 + 1000, limit=1) == ["g1"]
