"""The failure table as pure functions (I5, I6), and the retry backoff policy."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable

import pytest

from grantkeeper import _exceptions as errors
from grantkeeper._exceptions import (
    ClientAuthFailed,
    GrantkeeperError,
    LostInFlight,
    NeedsReauth,
    ProviderRejected,
    ReuseDetected,
    RevokedOrExpired,
    StaleLocalToken,
)
from grantkeeper._secrets import Secret
from grantkeeper.model import Attempt, AttemptState, Grant, GrantState
from grantkeeper.protocol.answers import HttpReply, OAuthFailure, interpret
from grantkeeper.protocol.classify import classify_invalid_grant, classify_other, dead_grant_error
from grantkeeper.protocol.policy import RefreshPolicy

REFRESH_OLD = "RT-old-refresh-token-0123456789abcdef"
REFRESH_NEW = "RT-new-refresh-token-fedcba9876543210"
ACCESS = "AT-access-token-value-0123456789abcdef"
FP_OLD = "fp_1111aaaa2222bbbb"
FP_NEW = "fp_3333cccc4444dddd"
TOKENS = (REFRESH_OLD, REFRESH_NEW, ACCESS)


def grant(*, refresh: str = REFRESH_OLD, fp: str = FP_OLD, generation: int = 3, **extra: object) -> Grant:
    fields: dict[str, object] = {
        "name": "billing-sync",
        "provider": "acme",
        "refresh_token": Secret(refresh),
        "refresh_fp": fp,
        "access_token": Secret(ACCESS),
        "access_fp": "fp_acce55acce55acce",
        "expires_at": 2_000_000_000.0,
        "scopes": ("read",),
        "generation": generation,
        "state": GrantState.ACTIVE,
    }
    fields.update(extra)
    return Grant(**fields)  # type: ignore[arg-type]


def attempt(*, id: int = 7, generation: int = 3, resend_of: int | None = None) -> Attempt:
    return Attempt(
        id=id, grant="billing-sync", generation=generation, refresh_fp=FP_OLD, worker="host-a:123",
        started_at=1_700_000_000.0, state=AttemptState.OPEN, resend_of=resend_of,
    )  # fmt: skip


SENT = grant()
LATEST_NEWER = grant(refresh=REFRESH_NEW, fp=FP_NEW, generation=4)


def invalid_grant(
    *, latest: Grant = SENT, att: Attempt | None = None, recent_resend: Attempt | None = None
) -> GrantkeeperError:
    return classify_invalid_grant(
        sent=SENT, latest=latest, attempt=att or attempt(), recent_resend=recent_resend, worker="host-a:123"
    )


def other(code: str, description: str = "", status: int = 400) -> GrantkeeperError:
    return classify_other(OAuthFailure(code, description, status), grant=SENT, attempt=attempt(), worker="host-a:123")


# --- classify_invalid_grant ---------------------------------------------------------------------------------


def test_stale_when_store_has_a_newer_fingerprint_and_generation() -> None:
    """invalid_grant for a token older than the store's latest is stale_local_token."""
    assert isinstance(invalid_grant(latest=LATEST_NEWER), StaleLocalToken)


def test_stale_when_only_the_fingerprint_differs() -> None:
    """A different latest fingerprint at the same generation is still stale_local_token."""
    assert isinstance(invalid_grant(latest=grant(refresh=REFRESH_NEW, fp=FP_NEW)), StaleLocalToken)


def test_stale_when_only_the_generation_differs() -> None:
    """A different latest generation with the same fingerprint is still stale_local_token."""
    assert isinstance(invalid_grant(latest=grant(generation=4)), StaleLocalToken)


def test_stale_wins_over_a_resend_and_a_recent_resend() -> None:
    """A stale token is stale_local_token even when the attempt was a re-send or a recent re-send exists."""
    exc = invalid_grant(latest=LATEST_NEWER, att=attempt(resend_of=5), recent_resend=attempt(id=6))
    assert isinstance(exc, StaleLocalToken)


def test_stale_is_never_a_dead_grant() -> None:
    """stale_local_token is not a NeedsReauth: the grant is not reported as revoked (I5)."""
    assert not isinstance(invalid_grant(latest=LATEST_NEWER), NeedsReauth)


def test_stale_message_names_both_fingerprints_and_generations() -> None:
    """The stale message names the sent and the stored fingerprint and generation."""
    message = str(invalid_grant(latest=LATEST_NEWER))
    assert all(part in message for part in (FP_OLD, FP_NEW, "generation 3", "generation 4"))


def test_lost_in_flight_when_attempt_was_a_resend() -> None:
    """invalid_grant on a re-send of the latest token is lost_in_flight."""
    assert isinstance(invalid_grant(att=attempt(id=8, resend_of=5)), LostInFlight)


def test_lost_in_flight_names_the_crashed_attempt() -> None:
    """lost_in_flight points at the attempt that spent the token (resend_of), in evidence and message."""
    exc = invalid_grant(att=attempt(id=8, resend_of=5))
    assert exc.attempt_id == 5
    assert "attempt 5" in str(exc)


def test_lost_in_flight_wins_over_a_recent_resend() -> None:
    """When the attempt itself is a re-send, lost_in_flight is chosen over reuse_detected."""
    assert isinstance(invalid_grant(att=attempt(id=8, resend_of=5), recent_resend=attempt(id=6)), LostInFlight)


def test_reuse_detected_when_a_recent_resend_explains_it() -> None:
    """invalid_grant after a recent re-send of a possibly-spent token is reuse_detected."""
    assert isinstance(invalid_grant(recent_resend=attempt(id=6, generation=2)), ReuseDetected)


def test_reuse_detected_names_the_recent_resend() -> None:
    """reuse_detected points at the recent re-send attempt, in evidence and message."""
    exc = invalid_grant(recent_resend=attempt(id=6, generation=2))
    assert exc.attempt_id == 6
    assert "attempt 6" in str(exc)


def test_revoked_or_expired_otherwise() -> None:
    """invalid_grant for the latest token with no re-send involved is revoked_or_expired."""
    assert isinstance(invalid_grant(), RevokedOrExpired)


def test_revoked_or_expired_points_at_this_attempt() -> None:
    """revoked_or_expired's evidence names the attempt that was rejected."""
    assert invalid_grant(att=attempt(id=11)).attempt_id == 11


INVALID_GRANT_CASES: dict[str, Callable[[], GrantkeeperError]] = {
    "stale": lambda: invalid_grant(latest=LATEST_NEWER),
    "lost": lambda: invalid_grant(att=attempt(id=8, resend_of=5)),
    "reuse": lambda: invalid_grant(recent_resend=attempt(id=6)),
    "revoked": invalid_grant,
}


@pytest.mark.parametrize("make", INVALID_GRANT_CASES.values(), ids=INVALID_GRANT_CASES.keys())
def test_invalid_grant_evidence_is_complete(make: Callable[[], GrantkeeperError]) -> None:
    """Every invalid_grant classification carries grant, generation, fingerprint, worker and the OAuth code."""
    facts = make().evidence()
    assert {k: facts[k] for k in ("grant", "generation", "fingerprint", "worker", "oauth_error")} == {
        "grant": "billing-sync",
        "generation": 3,
        "fingerprint": FP_OLD,
        "worker": "host-a:123",
        "oauth_error": "invalid_grant",
    }


@pytest.mark.parametrize("make", INVALID_GRANT_CASES.values(), ids=INVALID_GRANT_CASES.keys())
def test_invalid_grant_message_names_grant_and_fingerprint(make: Callable[[], GrantkeeperError]) -> None:
    """Every invalid_grant message names the grant and the sent token's fingerprint."""
    message = str(make())
    assert "billing-sync" in message
    assert FP_OLD in message


# --- classify_other -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["invalid_client", "unauthorized_client"])
def test_client_auth_failed_for_client_errors(code: str) -> None:
    """invalid_client and unauthorized_client are client_auth_failed."""
    assert isinstance(other(code, status=401), ClientAuthFailed)


def test_client_auth_failed_is_not_a_dead_grant() -> None:
    """A client-credential problem is never reported as a dead grant (I5)."""
    assert not isinstance(other("invalid_client", status=401), NeedsReauth)


def test_client_auth_failed_message_says_what_to_fix() -> None:
    """The client_auth_failed message names provider, grant, code, status and says the grant was not touched."""
    message = str(other("invalid_client", status=401))
    assert all(part in message for part in ("'acme'", "'billing-sync'", "invalid_client", "HTTP 401", "not touched"))


@pytest.mark.parametrize("code", ["invalid_scope", "invalid_request", "unsupported_grant_type", "access_denied"])
def test_provider_rejected_for_other_codes(code: str) -> None:
    """Any other OAuth error is provider_rejected, with the code as evidence."""
    exc = other(code)
    assert isinstance(exc, ProviderRejected)
    assert exc.oauth_error == code


def test_provider_rejected_message_includes_the_description() -> None:
    """The provider_rejected message names the grant and includes the (sanitized) description."""
    message = str(other("invalid_scope", description="scope 'admin' not allowed"))
    assert "'billing-sync'" in message
    assert "scope 'admin' not allowed" in message


@pytest.mark.parametrize("code", ["invalid_client", "invalid_scope"])
def test_other_errors_carry_fingerprint_and_attempt_as_evidence(code: str) -> None:
    """classify_other's errors carry grant, generation, fingerprint, attempt and worker as evidence."""
    facts = other(code).evidence()
    assert {k: facts[k] for k in ("grant", "generation", "fingerprint", "attempt_id", "worker", "oauth_error")} == {
        "grant": "billing-sync",
        "generation": 3,
        "fingerprint": FP_OLD,
        "attempt_id": 7,
        "worker": "host-a:123",
        "oauth_error": code,
    }


# --- dead_grant_error ---------------------------------------------------------------------------------------


def test_dead_grant_error_repeats_the_recorded_cause() -> None:
    """dead_grant_error is NeedsReauth naming the grant, generation and recorded last error."""
    exc = dead_grant_error(grant(state=GrantState.NEEDS_REAUTH, last_error="revoked_or_expired at generation 3"))
    assert isinstance(exc, NeedsReauth)
    assert all(part in str(exc) for part in ("'billing-sync'", "generation 3", "revoked_or_expired at generation 3"))


def test_dead_grant_error_without_recorded_cause() -> None:
    """Without a recorded cause, dead_grant_error still says the grant was marked needs_reauth."""
    assert "marked needs_reauth" in str(dead_grant_error(grant(state=GrantState.NEEDS_REAUTH)))


def test_dead_grant_error_carries_the_fingerprint_as_evidence() -> None:
    """dead_grant_error's evidence carries grant, generation and fingerprint."""
    facts = dead_grant_error(grant(state=GrantState.NEEDS_REAUTH)).evidence()
    assert (facts["grant"], facts["generation"], facts["fingerprint"]) == ("billing-sync", 3, FP_OLD)


# --- no token anywhere (I6) ---------------------------------------------------------------------------------


def _interpreted_failure(body: dict[str, str]) -> OAuthFailure:
    """An OAuthFailure as interpret() produces it (its description is sanitized there, by contract)."""
    result = interpret(HttpReply(400, {"content-type": "application/json"}, json.dumps(body).encode()), 0.0)
    assert isinstance(result, OAuthFailure)
    return result


ALL_CASES: dict[str, Callable[[], GrantkeeperError]] = {
    **INVALID_GRANT_CASES,
    "client": lambda: other("invalid_client", status=401),
    "rejected": lambda: classify_other(
        _interpreted_failure({"error": "invalid_scope", "error_description": f"token {REFRESH_OLD} lacks scope"}),
        grant=SENT,
        attempt=attempt(),
        worker="host-a:123",
    ),
    "dead": lambda: dead_grant_error(grant(state=GrantState.NEEDS_REAUTH, last_error="revoked_or_expired")),
}


@pytest.mark.parametrize("make", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_no_token_in_str_or_repr(make: Callable[[], GrantkeeperError]) -> None:
    """No refresh or access token value appears in str(exc), repr(exc) or the evidence (I6)."""
    exc = make()
    text = str(exc) + repr(exc) + repr(exc.args) + repr(exc.evidence())
    for token in TOKENS:
        assert token not in text


# --- exit codes and codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "exit_code"),
    [
        (StaleLocalToken, 11),
        (RevokedOrExpired, 5),
        (LostInFlight, 5),
        (ReuseDetected, 5),
        (ClientAuthFailed, 4),
        (ProviderRejected, 10),
    ],
)
def test_classified_errors_have_their_declared_exit_codes(cls: type[GrantkeeperError], exit_code: int) -> None:
    """Each classification carries the CLI exit code declared for its class."""
    assert cls.exit_code == exit_code


def test_exit_codes_are_distinct_per_declaring_class() -> None:
    """Every class that declares its own exit_code declares a different one."""
    declared = [cls for cls in vars(errors).values() if isinstance(cls, type) and "exit_code" in vars(cls)]
    codes = [cls.exit_code for cls in declared]
    assert len(declared) >= 9
    assert len(set(codes)) == len(codes)


def test_error_codes_are_distinct() -> None:
    """Every error class has its own machine-readable code."""
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, GrantkeeperError)]
    assert len({cls.code for cls in classes}) == len(classes)


# --- RefreshPolicy.backoff ----------------------------------------------------------------------------------


class _TopOfRange(random.Random):
    """A Random whose uniform() always returns the upper bound: backoff then equals the computed wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_grows_exponentially() -> None:
    """Without jitter, each retry waits twice as long as the one before (below the cap)."""
    policy = RefreshPolicy(backoff_base=0.1, backoff_cap=100.0, rng=_TopOfRange())
    assert [policy.backoff(n, None) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_backoff_is_capped() -> None:
    """Without jitter, the wait never exceeds backoff_cap however many retries."""
    policy = RefreshPolicy(backoff_base=0.1, backoff_cap=1.0, rng=_TopOfRange())
    assert [policy.backoff(n, None) for n in (5, 6, 10, 60)] == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_backoff_jitter_is_between_half_and_full_of_computed() -> None:
    """With a seeded Random, every wait lies in [0.5, 1.0] x the computed value."""
    policy = RefreshPolicy(backoff_base=0.2, backoff_cap=5.0, rng=random.Random(20240611))
    for retry, _ in itertools.product(range(1, 10), range(200)):
        computed = min(5.0, 0.2 * 2 ** (retry - 1))
        assert 0.5 * computed <= policy.backoff(retry, None) <= computed


def test_retry_wait_gives_up_on_tries_deadline_or_a_wait_the_lease_cannot_hold() -> None:
    """A transient failure is retried after the backoff (the provider's Retry-After a floor) until the tries or the
    deadline run out, or the wait would be longer than half the lease."""
    policy = RefreshPolicy(max_tries=3, deadline=10.0, lease_ttl=30.0, backoff_base=1.0, rng=_TopOfRange())
    assert policy.retry_wait(1, None, started=0.0, now=1.0) == pytest.approx(1.0)
    assert policy.retry_wait(2, 4.0, started=0.0, now=1.0) == pytest.approx(4.0)
    assert policy.retry_wait(3, None, started=0.0, now=1.0) is None  # out of tries
    assert policy.retry_wait(1, 5.0, started=0.0, now=6.0) is None  # 6 + 5 > 10 s
    roomy = RefreshPolicy(max_tries=3, deadline=100.0, lease_ttl=30.0, backoff_base=1.0, rng=_TopOfRange())
    assert roomy.retry_wait(1, 15.0, started=0.0, now=0.0) == pytest.approx(15.0)
    assert roomy.retry_wait(1, 16.0, started=0.0, now=0.0) is None  # more than half the 30 s lease


def test_backoff_jitter_spreads_waits() -> None:
    """Jitter actually varies: seeded samples cover both ends of the [0.5, 1.0] band."""
    policy = RefreshPolicy(backoff_base=1.0, backoff_cap=1.0, rng=random.Random(7))
    waits = [policy.backoff(1, None) for _ in range(500)]
    assert min(waits) < 0.55
    assert max(waits) > 0.95


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    """Two policies with equally seeded Randoms produce the same waits (randomness is injected)."""
    first = RefreshPolicy(rng=random.Random(99))
    second = RefreshPolicy(rng=random.Random(99))
    assert [first.backoff(n, None) for n in range(1, 8)] == [second.backoff(n, None) for n in range(1, 8)]


def test_retry_after_is_a_floor() -> None:
    """A Retry-After longer than the computed wait is waited in full."""
    policy = RefreshPolicy(backoff_base=0.2, backoff_cap=5.0, rng=random.Random(1))
    assert policy.backoff(1, 30.0) == 30.0


def test_short_retry_after_does_not_shorten_the_backoff() -> None:
    """A Retry-After shorter than the jittered wait leaves the wait unchanged."""
    with_hint = RefreshPolicy(backoff_base=1.0, backoff_cap=5.0, rng=random.Random(3)).backoff(3, 0.01)
    without = RefreshPolicy(backoff_base=1.0, backoff_cap=5.0, rng=random.Random(3)).backoff(3, None)
    assert with_hint == without


def test_retry_after_may_exceed_the_cap() -> None:
    """The cap bounds our own backoff, not the provider's Retry-After."""
    policy = RefreshPolicy(backoff_base=0.2, backoff_cap=5.0, rng=random.Random(1))
    assert policy.backoff(10, 120.0) == 120.0


def test_backoff_is_capped_for_very_large_retry_numbers() -> None:
    """The cap holds for any retry number, even one whose 2**n does not fit a float."""
    policy = RefreshPolicy(backoff_base=0.2, backoff_cap=5.0, rng=_TopOfRange())
    assert policy.backoff(1100, None) == 5.0


def test_non_rotating_provider_rejection_is_revocation_even_after_a_resend() -> None:
    """A provider that never rotates cannot have been 'spent' by a crashed attempt: invalid_grant on a re-send
    is revoked_or_expired, not lost_in_flight or reuse_detected."""
    error = classify_invalid_grant(
        sent=SENT, latest=SENT, attempt=attempt(id=9, resend_of=7), recent_resend=attempt(id=5, resend_of=3),
        worker="w", rotates=False,
    )  # fmt: skip
    assert isinstance(error, RevokedOrExpired)
