"""The failure table as pure functions: what an answer means, with evidence (docs/design.md, I5).

Which error applies is decided here; each error's message is built by its class (`grantkeeper._exceptions`)
from the facts passed in.
"""

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
    *,
    sent: Grant,
    latest: Grant,
    attempt: Attempt,
    recent_resend: Attempt | None,
    worker: str,
    rotates: bool = True,
    stale_send: Attempt | None = None,
) -> GrantkeeperError:
    """`invalid_grant` for the token `sent`, knowing the store's `latest` state.

    Order matters: a token older than the store's is a local bug, never a dead grant; a re-send of a
    possibly-spent token explains the rejection by the attempt that spent it; a recent re-send explains a
    family revocation, and so does a stale token sent just before in the same refresh (`stale_send`: a
    reuse-detecting provider revokes the family when it sees a spent token again); only then is the grant
    revoked or expired. A provider that never rotates cannot be explained by spending (`rotates` False): its
    invalid_grant is a revocation or expiry.
    """
    facts = {"grant": sent.name, "fingerprint": sent.refresh_fp, "worker": worker, "oauth_error": "invalid_grant"}
    if latest.refresh_fp != sent.refresh_fp or latest.generation != sent.generation:
        return StaleLocalToken.older_than_store(
            generation=sent.generation,
            latest_generation=latest.generation,
            latest_fingerprint=latest.refresh_fp,
            attempt_id=attempt.id,
            **facts,  # type: ignore[arg-type]
        )
    if attempt.resend_of is not None and rotates:
        return LostInFlight.resend_rejected(
            spent_by=attempt.resend_of,
            resend=attempt.id,
            generation=sent.generation,
            **facts,  # type: ignore[arg-type]
        )
    if recent_resend is not None and rotates:
        return ReuseDetected.after_resend(
            resend=recent_resend.id,
            resend_generation=recent_resend.generation,
            generation=sent.generation,
            **facts,  # type: ignore[arg-type]
        )
    if stale_send is not None and rotates:
        return ReuseDetected.after_stale_send(
            stale=stale_send.id,
            stale_fingerprint=stale_send.refresh_fp,
            stale_generation=stale_send.generation,
            generation=sent.generation,
            **facts,  # type: ignore[arg-type]
        )
    return RevokedOrExpired.rejected(
        generation=sent.generation,
        attempt_id=attempt.id,
        **facts,  # type: ignore[arg-type]
    )


def classify_other(failure: OAuthFailure, *, grant: Grant, attempt: Attempt, worker: str) -> GrantkeeperError:
    """Any OAuth error other than invalid_grant."""
    kind = ClientAuthFailed.rejected if failure.error in CLIENT_AUTH_ERRORS else ProviderRejected.refused
    return kind(
        provider=grant.provider,
        grant=grant.name,
        error=failure.error,
        status=failure.status,
        detail=f" ({failure.description})" if failure.description else "",
        generation=grant.generation,
        attempt_id=attempt.id,
        worker=worker,
        fingerprint=grant.refresh_fp,
        oauth_error=failure.error,
    )


def dead_grant_error(grant: Grant) -> NeedsReauth:
    """The error for a grant already marked needs_reauth: repeat its recorded cause."""
    return NeedsReauth.marked(
        grant=grant.name, generation=grant.generation, fingerprint=grant.refresh_fp, cause=grant.last_error
    )
