"""The failure table, row by row, through a real Keeper against the loopback provider simulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from grantkeeper import (
    AttemptState,
    ClientAuthFailed,
    GrantState,
    Keeper,
    LostInFlight,
    MalformedResponse,
    NeedsReauth,
    ProviderUnavailable,
    RevokedOrExpired,
    Secret,
)
from grantkeeper import _failpoints as failpoints
from grantkeeper.stores import SQLiteStore
from grantkeeper.testing import DropAfterRotate, DropBeforeProcessing, FakeClock, HttpError, Malformed
from tests.helpers import FAST_POLICY, add_grant, provider_for, resource_ok

Sim = Callable[..., object]


def states(keeper: Keeper) -> list[AttemptState]:
    """Attempt states, oldest first."""
    return [a.state for a in reversed(keeper.store.list_attempts("g"))]


class TestHappyPath:
    def test_refresh_persists_rotated_token_before_returning(self, keeper: Keeper, make_sim: Sim) -> None:
        """The provider's replacement refresh token is in the store when the access token is handed out (I1)."""
        sim = make_sim()
        add_grant(keeper, sim)
        token = keeper.access_token("g")
        grant = keeper.store.get_grant("g")
        assert grant.generation == 2 and grant.refresh_token is not None
        assert sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined]
        assert resource_ok(sim, token)

    def test_cached_token_needs_no_provider_call(self, keeper: Keeper, make_sim: Sim) -> None:
        """A valid cached access token is served again without a provider call."""
        sim = make_sim()
        add_grant(keeper, sim)
        first = keeper.access_token("g")
        assert [keeper.access_token("g") for _ in range(50)] == [first] * 50
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]

    def test_second_keeper_reads_committed_token_not_provider(self, sqlite_url: str, make_sim: Sim) -> None:
        """Another keeper on the same store uses the committed access token (read-your-writes, I4)."""
        sim = make_sim()
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as a, Keeper.open(sqlite_url, policy=FAST_POLICY) as b:
            add_grant(a, sim)
            assert a.access_token("g") == b.access_token("g")
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]

    def test_force_refresh_advances_generation_by_one(self, keeper: Keeper, make_sim: Sim) -> None:
        """refresh(force=True) spends the current token once and commits generation+1."""
        sim = make_sim()
        add_grant(keeper, sim)
        assert keeper.refresh("g").generation == 2
        assert keeper.refresh("g", force=True).generation == 3
        assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]

    @pytest.mark.parametrize("echo", [False, True])
    def test_non_rotating_provider_keeps_refresh_token(self, keeper: Keeper, make_sim: Sim, echo: bool) -> None:
        """No refresh token (or the same one) in the response keeps ours; generation still advances."""
        sim = make_sim(rotation="never", echo_refresh_token=echo)
        original = add_grant(keeper, sim, rotation="never")
        for expected in (2, 3, 4):
            assert keeper.refresh("g", force=True).generation == expected
        grant = keeper.store.get_grant("g")
        assert grant.refresh_token == Secret(original)

    def test_conditional_rotation_always_keeps_latest(self, keeper: Keeper, make_sim: Sim) -> None:
        """With conditional rotation the latest refresh token returned is always the stored one."""
        sim = make_sim(rotation="conditional", conditional_every=2)
        add_grant(keeper, sim, rotation="conditional")
        for _ in range(5):
            keeper.refresh("g", force=True)
            stored = keeper.store.get_grant("g").refresh_token
            assert stored is not None and sim.is_active(stored.reveal())  # type: ignore[attr-defined]
        assert sim.stats.errors == {}  # type: ignore[attr-defined]

    def test_missing_expires_in_uses_provider_default(self, keeper: Keeper, make_sim: Sim) -> None:
        """A response without expires_in gets the provider's default lifetime, counted from the send time."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.inject(Malformed("missing_expires_in"))  # type: ignore[attr-defined]
        grant = keeper.refresh("g")
        assert grant.expires_at is not None and grant.updated_at is not None
        assert 3500 < grant.expires_at - grant.updated_at <= 3600

    def test_tolerated_expires_in_forms(self, keeper: Keeper, make_sim: Sim) -> None:
        """expires_in as a numeric string is accepted; an absurd one is clamped to a year, not trusted."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.inject(Malformed("expires_in_string"))  # type: ignore[attr-defined]
        grant = keeper.refresh("g")
        assert grant.generation == 2 and 3500 < grant.expires_at - grant.updated_at <= 3600  # type: ignore[operator]
        sim.inject(Malformed("expires_in_huge"))  # type: ignore[attr-defined]
        grant = keeper.refresh("g", force=True)
        assert grant.generation == 3 and grant.expires_at - grant.updated_at <= 366 * 86400  # type: ignore[operator]


class TestTransient:
    def test_5xx_is_retried_and_grant_stays_healthy(self, keeper: Keeper, make_sim: Sim) -> None:
        """503s are retried with backoff; the token was not consumed, so the retry succeeds."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.inject(HttpError(503), times=2)  # type: ignore[attr-defined]
        assert keeper.refresh("g").generation == 2
        assert states(keeper) == [AttemptState.REJECTED, AttemptState.REJECTED, AttemptState.COMMITTED]

    def test_429_retry_after_and_temporarily_unavailable(self, keeper: Keeper, make_sim: Sim) -> None:
        """429 with Retry-After and a temporarily_unavailable error are both transient and retried."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.inject(HttpError(429, retry_after="0"))  # type: ignore[attr-defined]
        sim.inject(HttpError(400, error="temporarily_unavailable"))  # type: ignore[attr-defined]
        assert keeper.refresh("g").generation == 2
        assert sim.stats.refresh_calls == 3  # type: ignore[attr-defined]

    def test_retries_are_bounded(self, keeper: Keeper, make_sim: Sim) -> None:
        """Persistent 5xx gives ProviderUnavailable after max_tries; the grant and its token are untouched."""
        sim = make_sim()
        refresh = add_grant(keeper, sim)
        sim.inject(HttpError(500), times=100)  # type: ignore[attr-defined]
        with pytest.raises(ProviderUnavailable, match="not consumed") as info:
            keeper.refresh("g")
        assert sim.stats.refresh_calls == FAST_POLICY.max_tries  # type: ignore[attr-defined]
        grant = keeper.store.get_grant("g")
        assert (grant.state, grant.generation) == (GrantState.ACTIVE, 1)
        assert sim.is_active(refresh)  # type: ignore[attr-defined]
        assert info.value.attempt_id is not None and keeper.store.lease_holder("g", now=0) is None

    def test_connection_refused_is_not_sent(self, keeper: Keeper, make_sim: Sim) -> None:
        """A provider that refuses connections: attempts are recorded as never sent; the grant stays healthy."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.stop()  # type: ignore[attr-defined]
        with pytest.raises(ProviderUnavailable):
            keeper.refresh("g")
        assert set(states(keeper)) == {AttemptState.NOT_SENT}
        assert keeper.store.get_grant("g").state is GrantState.ACTIVE

    def test_dropped_before_processing_then_retry(self, keeper: Keeper, make_sim: Sim) -> None:
        """A connection dropped before the provider processed it is ambiguous; the re-send succeeds, and its
        answer's access token is replaced by one more refresh with the successor (a re-send's answer is never
        served on trust: it could be a grace replay)."""
        sim = make_sim()
        add_grant(keeper, sim)
        sim.inject(DropBeforeProcessing())  # type: ignore[attr-defined]
        assert keeper.refresh("g").generation == 3
        assert states(keeper) == [AttemptState.AMBIGUOUS, AttemptState.COMMITTED, AttemptState.COMMITTED]


class TestAmbiguous:
    def test_reset_after_rotation_within_grace_recovers_successor(self, keeper: Keeper, make_sim: Sim) -> None:
        """Rotate-then-drop inside the reuse grace: the re-send gets the successor already issued; committed (as
        generation 2), then spent once more for an access token that is not a replay (generation 3)."""
        sim = make_sim(reuse_grace=30)
        add_grant(keeper, sim, grace=30)
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        grant = keeper.refresh("g")
        assert grant.generation == 3 and sim.stats.grace_replays == 1  # type: ignore[attr-defined]
        assert sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined, union-attr]
        verify, resend, dropped = keeper.store.list_attempts("g")[:3]
        assert resend.resend_of == dropped.id and dropped.state is AttemptState.AMBIGUOUS
        assert (resend.new_generation, verify.new_generation, verify.resend_of) == (2, 3, None)

    def test_reset_after_rotation_without_grace_is_lost_in_flight(self, keeper: Keeper, make_sim: Sim) -> None:
        """Rotate-then-drop with no grace: the one re-send is rejected and classified lost_in_flight,
        naming the attempt that spent the token; the grant is marked for re-consent."""
        sim = make_sim(reuse_grace=0)
        add_grant(keeper, sim)
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        with pytest.raises(LostInFlight) as info:
            keeper.refresh("g")
        ambiguous = keeper.store.list_attempts("g")[1]
        assert ambiguous.state is AttemptState.AMBIGUOUS and info.value.attempt_id == ambiguous.id
        assert keeper.store.get_grant("g").state is GrantState.NEEDS_REAUTH
        with pytest.raises(NeedsReauth, match="lost_in_flight"):
            keeper.access_token("g")
        assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]

    def test_reset_with_non_rotating_provider_is_harmless(self, keeper: Keeper, make_sim: Sim) -> None:
        """A non-rotating provider: the re-send after a reset simply succeeds."""
        sim = make_sim(rotation="never")
        add_grant(keeper, sim, rotation="never")
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        assert keeper.refresh("g").generation == 2

    def test_grace_replay_of_an_expired_access_token_is_never_served(self, keeper: Keeper, make_sim: Sim) -> None:
        """A grace re-send answered with the earlier access token (expired by now, with a fresh ``expires_in``, as
        django-oauth-toolkit does): the successor is committed, that access token is never handed out, and one
        more refresh with the successor gets one the resource server accepts."""
        sim_clock = FakeClock()
        sim = make_sim(reuse_grace=30, access_ttl=2, grace_returns_previous_access=True, clock=sim_clock.monotonic)
        add_grant(keeper, sim, grace=30)
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]

        def expire_the_dropped_answers_token() -> None:
            failpoints.clear_hooks()
            sim_clock.advance(5)

        failpoints.set_hook("after_send", expire_the_dropped_answers_token)
        token = keeper.access_token("g")
        assert resource_ok(sim, token)
        assert sim.stats.grace_replays == 1 and sim.stats.refresh_calls == 3  # type: ignore[attr-defined]
        grant = keeper.store.get_grant("g")
        assert grant.generation == 3 and grant.access_verified
        assert sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined, union-attr]


class TestRejected:
    def test_invalid_client_does_not_touch_grant(self, keeper: Keeper, make_sim: Sim) -> None:
        """Wrong client credentials: client_auth_failed; the grant stays active and its token unspent."""
        sim = make_sim()
        refresh = add_grant(keeper, sim)
        keeper.add_provider(dataclasses.replace(provider_for(sim), client_secret=Secret("wrong-secret")))
        with pytest.raises(ClientAuthFailed, match="client credentials"):
            keeper.refresh("g")
        grant = keeper.store.get_grant("g")
        assert grant.state is GrantState.ACTIVE and grant.generation == 1
        assert sim.is_active(refresh)  # type: ignore[attr-defined]

    def test_revoked_latest_token_needs_reauth(self, keeper: Keeper, make_sim: Sim) -> None:
        """invalid_grant for the store's latest token: revoked_or_expired, grant marked, no further calls."""
        sim = make_sim()
        refresh = add_grant(keeper, sim)
        sim.revoke_family(refresh)  # type: ignore[attr-defined]
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g")
        with pytest.raises(NeedsReauth):
            keeper.access_token("g")
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]

    def test_stale_local_token_is_retried_with_latest(self, keeper: Keeper, make_sim: Sim) -> None:
        """invalid_grant for a token older than the store's: stale_local_token, never a dead grant; the
        refresh is retried with the store's latest token and succeeds."""
        sim = make_sim()
        old = add_grant(keeper, sim)
        replacement = sim.issue_grant()  # type: ignore[attr-defined]

        def swap_token_behind_the_lease() -> None:
            failpoints.clear_hooks()
            sim.revoke_family(old)  # type: ignore[attr-defined]
            keeper.store.import_grant("g", provider="sim", refresh_token=Secret(replacement), scopes=(), now=0)

        failpoints.set_hook("before_send", swap_token_behind_the_lease)
        grant = keeper.refresh("g")
        assert grant.state is GrantState.ACTIVE and grant.generation == 3
        outcomes = [a.outcome for a in reversed(keeper.store.list_attempts("g"))]
        assert outcomes[0] == "stale_local_token"

    @pytest.mark.parametrize(
        "kind",
        ["html", "non_json", "missing_access_token", "wrong_types", "expires_in_negative", "oversized",
         "wrong_token_type", "json_array", "empty"],
    )  # fmt: skip
    def test_malformed_body_changes_nothing(self, keeper: Keeper, make_sim: Sim, kind: str) -> None:
        """A malformed 200 body is a MalformedResponse; stored state is unchanged and no token is in the message."""
        sim = make_sim()
        refresh = add_grant(keeper, sim)
        before = keeper.store.get_grant("g")
        sim.inject(Malformed(kind))  # type: ignore[attr-defined]
        with pytest.raises(MalformedResponse) as info:
            keeper.refresh("g")
        assert refresh not in str(info.value)
        after = keeper.store.get_grant("g")
        assert (after.generation, after.refresh_token, after.state) == (before.generation, before.refresh_token,
                                                                         GrantState.ACTIVE)  # fmt: skip
        # The malformed answer is recorded as ambiguous (a 200 may have rotated), so the next refresh re-sends
        # that token and then spends the successor once more for an access token that is not a replay.
        assert keeper.refresh("g").generation == 3

    def test_malformed_after_rotation_is_resent_per_grace(self, keeper: Keeper, make_sim: Sim) -> None:
        """A malformed 200 after the provider rotated is recorded ambiguous; the next refresh re-sends inside
        the grace window and gets the successor."""
        sim = make_sim(reuse_grace=30)
        add_grant(keeper, sim, grace=30)
        sim.inject(Malformed("html", rotate=True))  # type: ignore[attr-defined]
        with pytest.raises(MalformedResponse, match="ambiguous"):
            keeper.refresh("g")
        grant = keeper.refresh("g")
        assert grant.generation == 3 and sim.stats.grace_replays == 1  # type: ignore[attr-defined]


def test_dead_grant_drops_cached_access_token(store: SQLiteStore, make_sim: Sim) -> None:
    """Once a refresh finds the grant revoked, the same keeper stops serving its cached access token."""
    sim = make_sim()
    with Keeper(store, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.access_token("g")
        sim.revoke_family(keeper.store.get_grant("g").refresh_token.reveal())  # type: ignore[attr-defined, union-attr]
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
        with pytest.raises(NeedsReauth):
            keeper.access_token("g")
