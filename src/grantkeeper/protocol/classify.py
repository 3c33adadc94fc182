"""The failure table as pure functions: what an answer means, with evidence (docs/design.md, I5)."""

from __future__ import annotations

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
from grantkeeper.model import Attempt, Grant
from grantkeeper.protocol.answers import OAuthFailure

__all__ = ["CLIENT_AUTH_ERRORS", "classify_invalid_grant", "classify_other", "dead_grant_error"]

CLIENT_AUTH_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


def classify_invalid_grant(
    *, sent: Grant, latest: Grant, attempt: Attempt, recent_resend: Attempt | None, worker: str, rotates: bool = True,
    stale_send: Attempt | None = None,
) -> GrantkeeperError:  # fmt: skip
    """`invalid_grant` for the token `sent`, knowing the store's `latest` state.

    Order matters: a token older than the store's is a local bug, never a dead grant; a re-send of a
    possibly-spent token explains the rejection by the attempt that spent it; a recent re-send explains a
    family revocation, and so does a stale token sent just before in the same refresh (`stale_send`: a
    reuse-detecting provider revokes the family when it sees a spent token again); only then is the grant
    revoked or expired. A provider that never rotates cannot be explained by spending (`rotates` False): its
    invalid_grant is a revocation or expiry.
    """
    evidence = {"grant": sent.name, "generation": sent.generation, "fingerprint": sent.refresh_fp, "worker": worker,
                "oauth_error": "invalid_grant"}  # fmt: skip
    if latest.refresh_fp != sent.refresh_fp or latest.generation != sent.generation:
        return StaleLocalToken(
            f"grant {sent.name!r}: the provider rejected refresh token {sent.refresh_fp} (generation "
            f"{sent.generation}), but the store already holds {latest.refresh_fp} (generation "
            f"{latest.generation}). This is a local state bug (a stale copy was used), not a revocation; the "
            "grant is left active. Retry; if it repeats, look for code that reads refresh tokens from a cache",
            attempt_id=attempt.id, **evidence,  # type: ignore[arg-type]
        )  # fmt: skip
    if attempt.resend_of is not None and rotates:
        return LostInFlight(
            f"grant {sent.name!r}: refresh token {sent.refresh_fp} was already spent by attempt "
            f"{attempt.resend_of}, whose worker died or got no answer before storing the replacement; the "
            f"re-send (attempt {attempt.id}) was rejected, so the grant is lost. Re-authorize and re-import it; "
            "check the crashed worker's logs around that attempt",
            attempt_id=attempt.resend_of, **evidence,  # type: ignore[arg-type]
        )  # fmt: skip
    if recent_resend is not None and rotates:
        return ReuseDetected(
            f"grant {sent.name!r}: refresh token {sent.refresh_fp} was rejected after attempt "
            f"{recent_resend.id} re-sent a possibly-spent token (generation {recent_resend.generation}); the "
            "provider most likely treated that re-send as token reuse and revoked the whole grant. "
            "Re-authorize and re-import it; consider a larger reuse grace only if the provider documents one",
            attempt_id=recent_resend.id, **evidence,  # type: ignore[arg-type]
        )  # fmt: skip
    if stale_send is not None and rotates:
        return ReuseDetected(
            f"grant {sent.name!r}: the latest refresh token {sent.refresh_fp} was rejected right after attempt "
            f"{stale_send.id} sent an already spent token {stale_send.refresh_fp} (generation "
            f"{stale_send.generation}); the provider most likely treated that as token reuse and revoked the whole "
            "grant. The root cause is a stale local copy of the token: find what read it (see 'grantkeeper doctor'), "
            "then re-authorize and re-import the grant",
            attempt_id=stale_send.id, **evidence,  # type: ignore[arg-type]
        )  # fmt: skip
    return RevokedOrExpired(
        f"grant {sent.name!r}: the provider rejected the latest refresh token {sent.refresh_fp} (generation "
        f"{sent.generation}) with invalid_grant: it was revoked (user or admin), expired (idle or absolute "
        "lifetime), or the consent was withdrawn. Re-authorize and re-import the grant",
        attempt_id=attempt.id, **evidence,  # type: ignore[arg-type]
    )  # fmt: skip


def classify_other(failure: OAuthFailure, *, grant: Grant, attempt: Attempt, worker: str) -> GrantkeeperError:
    """Any OAuth error other than invalid_grant."""
    detail = f" ({failure.description})" if failure.description else ""
    evidence = {"grant": grant.name, "generation": grant.generation, "attempt_id": attempt.id, "worker": worker,
                "fingerprint": grant.refresh_fp, "oauth_error": failure.error}  # fmt: skip
    if failure.error in CLIENT_AUTH_ERRORS:
        return ClientAuthFailed(
            f"provider {grant.provider!r} rejected the client credentials with {failure.error} (HTTP "
            f"{failure.status}){detail}. Check the client id, secret and auth method; grant {grant.name!r} "
            "was not touched",
            **evidence,  # type: ignore[arg-type]
        )  # fmt: skip
    return ProviderRejected(
        f"provider {grant.provider!r} refused the refresh of grant {grant.name!r} with {failure.error} "
        f"(HTTP {failure.status}){detail}; the grant was not changed. Check the provider configuration",
        **evidence,  # type: ignore[arg-type]
    )  # fmt: skip


def dead_grant_error(grant: Grant) -> NeedsReauth:
    """The error for a grant already marked needs_reauth: repeat its recorded cause."""
    cause = grant.last_error or "marked needs_reauth"
    return NeedsReauth(
        f"grant {grant.name!r} needs re-authorization (generation {grant.generation}, last error: {cause}); "
        "re-authorize and re-import it with 'grantkeeper grant import'",
        grant=grant.name,
        generation=grant.generation,
        fingerprint=grant.refresh_fp,
    )
