"""The grantkeeper error tree, grouped by what the caller does next.

    GrantkeeperError
    ├── ConfigurationError        fix configuration, store file or key; nothing was sent
    │   ├── UnknownGrant
    │   ├── UnknownProvider
    │   ├── EncryptionKeyError     missing or wrong encryption key
    │   ├── StoreFormatError       corrupt, foreign or newer store file
    │   ├── TokenInputError        what was given to import is not one OAuth token value
    │   ├── SpentRefreshToken      the refresh token to import was already spent by a recorded refresh
    │   └── BundleError            an export bundle that is damaged, truncated or of an unknown format
    │       ├── BundleAuthError    wrong passphrase or key, or the bundle's bytes were changed
    │       └── BundleConflict     the bundle's grants exist here and replacing was not asked for
    ├── ClientAuthFailed           fix client credentials; the grant is untouched
    ├── NeedsReauth                the grant is dead: a user must consent again
    │   ├── RevokedOrExpired
    │   ├── LostInFlight           a crashed or ambiguous attempt consumed the token
    │   └── ReuseDetected          the provider revoked the family after a re-send
    ├── TransientError             retry later (``retry_after`` when known); the grant stays healthy
    │   ├── ProviderUnavailable
    │   ├── StoreUnavailable
    │   ├── LeaseTimeout           another worker held the grant's lease too long
    │   └── ConsentTimeout         `connect`: no redirect came back in time, or the device code expired
    ├── MalformedResponse          the provider answered with something that is not a token response
    ├── ProviderRejected           any other OAuth error (invalid_scope, invalid_request, ...)
    │   └── ConsentFailed          `connect`: the redirect carried an error, or a wrong ``state``
    │       └── ConsentDenied      the user (or the server's policy) refused consent: access_denied
    └── StaleLocalToken            a local state bug: a refresh token older than the store's was sent

Every error carries evidence as attributes (grant, generation, attempt id, fingerprint, worker, RFC 6749
error code) and a message saying what happened and what to do. No message ever contains a token, a client
secret or a raw provider body. ``exit_code`` is the CLI's exit status for the class (table in docs/cli.md).

The refresh transaction's errors are built by classmethods named for the situation (``LeaseTimeout.deferred``,
``LostInFlight.past_grace``...): they take the facts (names, generations, fingerprints, attempt ids, seconds),
so the message text lives here, next to the class, and the protocol only decides which one applies.
"""

from __future__ import annotations

import re
from typing import ClassVar, Self

__all__ = [
    "BundleAuthError",
    "BundleConflict",
    "BundleError",
    "ClientAuthFailed",
    "ConfigurationError",
    "ConsentDenied",
    "ConsentFailed",
    "ConsentTimeout",
    "EncryptionKeyError",
    "GrantkeeperError",
    "LeaseTimeout",
    "LostInFlight",
    "MalformedResponse",
    "NeedsReauth",
    "ProviderRejected",
    "ProviderUnavailable",
    "ReuseDetected",
    "RevokedOrExpired",
    "SpentRefreshToken",
    "StaleLocalToken",
    "StoreFormatError",
    "StoreUnavailable",
    "TLSVerificationFailed",
    "TokenInputError",
    "TransientError",
    "UnknownGrant",
    "UnknownProvider",
    "sanitize_provider_text",
    "without_controls",
]

# Anything that looks like a token (long run of token characters) is cut out of provider-supplied text
# before it reaches a message: some servers echo the presented token in error_description.
_TOKENISH = re.compile(r"[A-Za-z0-9\-_.~+/=]{20,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def without_controls(text: object, replacement: str = "?") -> str:
    """`text` with each control character (C0, DEL, C1: terminal escapes) replaced, for showing untrusted text."""
    return _CONTROL.sub(replacement, str(text))


def sanitize_provider_text(text: object, limit: int = 160) -> str:
    """Make provider-controlled text safe to show: no token-like runs, no control characters, bounded."""
    value = without_controls(text, " ")
    value = _TOKENISH.sub("[redacted]", value)
    limit = max(limit, 1)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class GrantkeeperError(Exception):
    """Base of every error grantkeeper raises."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1

    def __init_subclass__(cls, *, code: str | None = None, exit_code: int | None = None) -> None:
        """A subclass names its ``code`` (and, for a new outcome class, its ``exit_code``) in its header, so that a
        family of errors reads as a table: ``class UnknownGrant(ConfigurationError, code="unknown_grant")``.
        What it does not name it inherits."""
        super().__init_subclass__()
        if code is not None:
            cls.code = code
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(
        self,
        message: str,
        *,
        grant: str | None = None,
        generation: int | None = None,
        attempt_id: int | None = None,
        fingerprint: str | None = None,
        worker: str | None = None,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.grant = grant
        self.generation = generation
        self.attempt_id = attempt_id
        self.fingerprint = fingerprint
        self.worker = worker
        self.oauth_error = oauth_error

    def evidence(self) -> dict[str, object]:
        """The structured facts behind the message (safe to log: fingerprints, never tokens)."""
        facts: dict[str, object] = {"code": self.code}
        for key in ("grant", "generation", "attempt_id", "fingerprint", "worker", "oauth_error"):
            value = getattr(self, key)
            if value is not None:
                facts[key] = value
        return facts


class ConfigurationError(GrantkeeperError, code="configuration", exit_code=3):
    """Configuration, input, store file or key is wrong; fix it and run again. Nothing was sent."""

    @classmethod
    def no_refresh_token(cls, *, grant: str) -> Self:
        return cls(f"grant {grant!r} has no refresh token; re-import it")


class TLSVerificationFailed(ConfigurationError, code="tls_verification_failed"):
    """The provider's TLS certificate did not verify against the trusted CAs; nothing was sent (the handshake
    failed before the request). Give the CA with ``--ca-bundle`` or ``SSL_CERT_FILE``."""


class UnknownGrant(ConfigurationError, code="unknown_grant"):
    """No grant of that name in the store."""


class UnknownProvider(ConfigurationError, code="unknown_provider"):
    def __init__(self, message: str, *, provider: str | None = None, **evidence: object) -> None:
        super().__init__(message, **evidence)  # type: ignore[arg-type]
        self.provider = provider  # the name that was not found


class EncryptionKeyError(ConfigurationError, code="key_error"):
    """The encryption key is missing or is not the key this store was created with."""


class StoreFormatError(ConfigurationError, code="store_format"):
    """The store file is corrupt, not a grantkeeper store, or written by a newer grantkeeper."""


class TokenInputError(ConfigurationError, code="token_input"):
    """What was given as a refresh token is not a single RFC 6749 token value (a JSON document, a header, several
    words, control characters...). The message describes its shape, never its value; nothing was stored."""


class SpentRefreshToken(ConfigurationError, code="spent_refresh_token"):
    """The refresh token to import was spent by a refresh grantkeeper recorded: a rotating provider would refuse
    it (and one that detects reuse would revoke the whole grant). Nothing was stored."""

    @classmethod
    def spent(
        cls, *, grant: str, fingerprint: str, attempt_id: int, spent_at: str, generation: int, worker: str | None,
        current_generation: int, current_fp: str | None, current_state: str,
    ) -> Self:  # fmt: skip
        """Attempt `attempt_id` (of `generation`, at `spent_at`) spent the token to import; the grant is now at
        `current_generation`."""
        who = f", worker {worker}" if worker else ", since pruned from the kept history"
        return cls(
            f"grant {grant!r}: this refresh token ({fingerprint}) was spent by attempt {attempt_id} at {spent_at} "
            f"(generation {generation}{who}); the grant's current token is generation {current_generation} "
            f"({current_fp}, {current_state}). The provider rotated it, so it would refuse this one (a provider that "
            "detects reuse would revoke the whole grant). Nothing was stored: keep the current token ('grantkeeper "
            f"doctor {grant}' says whether it works), or have the user authorize again and import the new token",
            grant=grant, generation=current_generation, attempt_id=attempt_id, fingerprint=fingerprint,
        )  # fmt: skip


class BundleError(ConfigurationError, code="bundle"):
    """The file is not a bundle this grantkeeper reads: damaged, truncated, or of an unknown version."""


class BundleAuthError(BundleError, code="bundle_auth"):
    """The bundle does not open: wrong passphrase or key, or its bytes were changed."""


class BundleConflict(BundleError, code="bundle_conflict"):
    """Importing would replace grants that already exist here, and replacing was not asked for."""


class ClientAuthFailed(GrantkeeperError, code="client_auth_failed", exit_code=4):
    """The provider rejected our client credentials (invalid_client / unauthorized_client)."""

    @classmethod
    def rejected(cls, *, provider: str, grant: str, error: str, status: int, detail: str, **evidence: object) -> Self:
        """`detail`: the provider's sanitized description in parentheses with a leading space, or empty."""
        return cls(
            f"provider {provider!r} rejected the client credentials with {error} (HTTP {status}){detail}. Check the "
            f"client id, secret and auth method; grant {grant!r} was not touched",
            grant=grant,
            **evidence,  # type: ignore[arg-type]
        )


class NeedsReauth(GrantkeeperError, code="needs_reauth", exit_code=5):
    """The grant can no longer be refreshed; a user must authorize again and the grant be re-imported."""

    @classmethod
    def marked(cls, *, grant: str, generation: int, fingerprint: str | None, cause: str | None) -> Self:
        """A grant already marked needs_reauth: repeat its recorded `cause`."""
        return cls(
            f"grant {grant!r} needs re-authorization (generation {generation}, last error: "
            f"{cause or 'marked needs_reauth'}); re-authorize and re-import it with 'grantkeeper grant import'",
            grant=grant,
            generation=generation,
            fingerprint=fingerprint,
        )


class RevokedOrExpired(NeedsReauth, code="revoked_or_expired"):
    @classmethod
    def rejected(cls, *, grant: str, generation: int, fingerprint: str | None, **evidence: object) -> Self:
        """The provider refused the grant's latest refresh token, and nothing local explains it."""
        return cls(
            f"grant {grant!r}: the provider rejected the latest refresh token {fingerprint} (generation "
            f"{generation}) with invalid_grant: it was revoked (user or admin), expired (idle or absolute "
            "lifetime), or the consent was withdrawn. Re-authorize and re-import the grant",
            grant=grant,
            generation=generation,
            fingerprint=fingerprint,
            **evidence,  # type: ignore[arg-type]
        )


class LostInFlight(NeedsReauth, code="lost_in_flight"):
    @classmethod
    def resend_rejected(
        cls, *, grant: str, fingerprint: str | None, spent_by: int, resend: int, **evidence: object
    ) -> Self:
        """The re-send (attempt `resend`) of a token attempt `spent_by` may have spent was refused."""
        return cls(
            f"grant {grant!r}: refresh token {fingerprint} was already spent by attempt {spent_by}, whose worker "
            f"died or got no answer before storing the replacement; the re-send (attempt {resend}) was rejected, "
            "so the grant is lost. Re-authorize and re-import it; check the crashed worker's logs around that "
            "attempt",
            grant=grant,
            fingerprint=fingerprint,
            attempt_id=spent_by,
            **evidence,  # type: ignore[arg-type]
        )

    @classmethod
    def past_grace(
        cls,
        *,
        grant: str,
        generation: int,
        fingerprint: str | None,
        attempt_id: int,
        prior_worker: str,
        worker: str,
        age: float,
        grace: float,
    ) -> Self:
        """Not re-sent: attempt `attempt_id` may have spent the token `age` seconds ago, past the `grace`."""
        return cls(
            f"grant {grant!r}: attempt {attempt_id} by worker {prior_worker} may have spent refresh token "
            f"{fingerprint} and its replacement was never stored; that was {age:.1f} s ago, past the provider's "
            f"{grace:.0f} s reuse grace, so a re-send would be refused and could make the provider revoke the grant. "
            "Not re-sent: the grant is lost. Re-authorize and re-import it; check that worker's logs around the "
            "attempt",
            grant=grant,
            generation=generation,
            attempt_id=attempt_id,
            worker=worker,
            fingerprint=fingerprint,
        )


class ReuseDetected(NeedsReauth, code="reuse_detected"):
    @classmethod
    def after_resend(
        cls, *, grant: str, fingerprint: str | None, resend: int, resend_generation: int, **evidence: object
    ) -> Self:
        """The latest token was refused after attempt `resend` re-sent a possibly spent one."""
        return cls(
            f"grant {grant!r}: refresh token {fingerprint} was rejected after attempt {resend} re-sent a "
            f"possibly-spent token (generation {resend_generation}); the provider most likely treated that re-send "
            "as token reuse and revoked the whole grant. Re-authorize and re-import it; consider a larger reuse "
            "grace only if the provider documents one",
            grant=grant,
            fingerprint=fingerprint,
            attempt_id=resend,
            **evidence,  # type: ignore[arg-type]
        )

    @classmethod
    def after_stale_send(
        cls,
        *,
        grant: str,
        fingerprint: str | None,
        stale: int,
        stale_fingerprint: str,
        stale_generation: int,
        **evidence: object,
    ) -> Self:
        """The latest token was refused right after attempt `stale` sent an already spent one."""
        return cls(
            f"grant {grant!r}: the latest refresh token {fingerprint} was rejected right after attempt {stale} sent "
            f"an already spent token {stale_fingerprint} (generation {stale_generation}); the provider most likely "
            "treated that as token reuse and revoked the whole grant. The root cause is a stale local copy of the "
            "token: find what read it (see 'grantkeeper doctor'), then re-authorize and re-import the grant",
            grant=grant,
            fingerprint=fingerprint,
            attempt_id=stale,
            **evidence,  # type: ignore[arg-type]
        )


class TransientError(GrantkeeperError, code="transient", exit_code=6):
    """A temporary condition; retry later. ``retry_after`` is the suggested wait in seconds, if known."""

    def __init__(self, message: str, *, retry_after: float | None = None, **evidence: object) -> None:
        super().__init__(message, **evidence)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderUnavailable(TransientError, code="provider_unavailable"):
    @classmethod
    def no_answer(
        cls, *, grant: str, provider: str, fingerprint: str | None, reason: str, attempt_id: int, **evidence: object
    ) -> Self:
        """A refresh token was sent and no answer came (again, or past the deadline): the attempt is ambiguous."""
        return cls(
            f"grant {grant!r}: no answer from provider {provider!r} after sending refresh token {fingerprint} "
            f"({reason}); attempt {attempt_id} is recorded as ambiguous and the next refresh re-sends it per the "
            "provider's reuse grace. Retry later",
            grant=grant,
            fingerprint=fingerprint,
            attempt_id=attempt_id,
            **evidence,  # type: ignore[arg-type]
        )

    @classmethod
    def gave_up(cls, *, grant: str, failure: str, tries: int, retry_after: float | None, **evidence: object) -> Self:
        """Transient failures (`failure`: the last one) used up the tries or the time; nothing was spent."""
        return cls(
            f"grant {grant!r}: {failure}; gave up after {tries} tries. The refresh token was not consumed and the "
            "grant stays healthy; retry later",
            retry_after=retry_after,
            grant=grant,
            **evidence,
        )


class StoreUnavailable(TransientError, code="store_unavailable", exit_code=7):
    """The store cannot be used right now (unreachable, locked, out of pooled connections); retry later."""


class LeaseTimeout(TransientError, code="lease_timeout", exit_code=8):
    @classmethod
    def held(
        cls, *, grant: str, generation: int, worker: str, fence: int, waited: float, expires_at: float, now: float
    ) -> Self:
        """Worker `worker` kept the lease and no result came within `waited` seconds."""
        return cls(
            f"grant {grant!r} is being refreshed by worker {worker} (fence {fence}) and no result arrived within "
            f"{waited:.0f} s; its lease expires at {expires_at:.0f} (epoch s). Retry later; if this repeats, that "
            "worker is stuck",
            grant=grant,
            generation=generation,
            worker=worker,
            retry_after=max(0.0, expires_at - now),
        )

    @classmethod
    def deferred(
        cls, *, grant: str, generation: int, fingerprint: str | None, attempt_id: int, worker: str, wait: float
    ) -> Self:
        """Not re-sending another host's possibly spent token for another `wait` seconds: it may still commit."""
        return cls(
            f"grant {grant!r}: attempt {attempt_id} by worker {worker} may have spent refresh token {fingerprint}, "
            "and that worker may still hold the successor in its local recovery storage (it could be cut off from "
            f"the database, not dead). Not re-sending for another {wait:.0f} s; retry then. If that worker is gone "
            "for good, the re-send after that is recorded and, if refused, reported as lost_in_flight",
            grant=grant,
            generation=generation,
            attempt_id=attempt_id,
            worker=worker,
            fingerprint=fingerprint,
            retry_after=wait,
        )


class ConsentTimeout(TransientError, code="consent_timeout"):
    """`connect`: no redirect came back in time, or the device code expired."""


class MalformedResponse(GrantkeeperError, code="malformed_response", exit_code=9):
    @classmethod
    def unusable(
        cls, *, provider: str, grant: str, status: int, reason: str, ambiguous: bool, **evidence: object
    ) -> Self:
        """Nothing usable and nothing stored; `ambiguous`: a 2xx, which may have rotated the token anyway."""
        resend = (
            "; the attempt is recorded as ambiguous and the next refresh re-sends per the provider's reuse grace"
            if ambiguous
            else ""
        )
        return cls(
            f"provider {provider!r} answered the refresh of grant {grant!r} with HTTP {status} that is not a usable "
            f"token response: {reason}. Nothing was stored{resend}. Check the token URL and the provider's status",
            grant=grant,
            **evidence,  # type: ignore[arg-type]
        )

    @classmethod
    def kept_successor(
        cls,
        *,
        provider: str,
        grant: str,
        status: int,
        reason: str,
        generation: int,
        superseded: bool,
        committed: bool,
        syntax_ok: bool,
        **evidence: object,
    ) -> Self:
        """An unusable answer that carried a new refresh token: it was kept (`committed` to the store or in
        recovery storage), or `superseded` by another worker's commit of `generation`."""
        if superseded:
            where = f"not stored: another worker committed first, and its generation {generation} is current"
        elif committed:
            where = f"stored (generation {generation})"
        else:
            where = "kept in local recovery storage and is committed when the store is writable again"
        odd = (
            ""
            if syntax_ok
            else " It is outside RFC 6749 token syntax, so the provider may refuse it: if the next refresh fails "
            "with invalid_grant, re-authorize the grant."
        )
        return cls(
            f"provider {provider!r} answered the refresh of grant {grant!r} with HTTP {status} that is not a usable "
            f"token response: {reason}. The answer did carry a new refresh token, which was {where}, because the "
            "provider has already rotated; the access token from that answer was discarded, never served, and the "
            f"next refresh uses the new refresh token.{odd} If this repeats, check what sits between grantkeeper "
            "and the token endpoint (a proxy rewriting answers) and the provider's status",
            grant=grant,
            generation=generation,
            **evidence,  # type: ignore[arg-type]
        )


class ProviderRejected(GrantkeeperError, code="provider_rejected", exit_code=10):
    @classmethod
    def refused(cls, *, provider: str, grant: str, error: str, status: int, detail: str, **evidence: object) -> Self:
        """Any OAuth error but invalid_grant and the client-authentication ones; `detail` as in ClientAuthFailed."""
        return cls(
            f"provider {provider!r} refused the refresh of grant {grant!r} with {error} (HTTP {status}){detail}; "
            "the grant was not changed. Check the provider configuration",
            grant=grant,
            **evidence,  # type: ignore[arg-type]
        )


class ConsentFailed(ProviderRejected, code="consent_failed"):
    """`connect`: the redirect carried an error, or a wrong ``state``."""


class ConsentDenied(ConsentFailed, code="consent_denied"):
    """The user (or the server's policy) refused consent: ``access_denied``."""


class StaleLocalToken(GrantkeeperError, code="stale_local_token", exit_code=11):
    @classmethod
    def older_than_store(
        cls,
        *,
        grant: str,
        generation: int,
        fingerprint: str | None,
        latest_generation: int,
        latest_fingerprint: str | None,
        **evidence: object,
    ) -> Self:
        """Refresh token `fingerprint` (`generation`) was refused, but the store already holds a newer one."""
        return cls(
            f"grant {grant!r}: the provider rejected refresh token {fingerprint} (generation {generation}), but the "
            f"store already holds {latest_fingerprint} (generation {latest_generation}). This is a local state bug "
            "(a stale copy was used), not a revocation; the grant is left active. Retry; if it repeats, look for "
            "code that reads refresh tokens from a cache",
            grant=grant,
            generation=generation,
            fingerprint=fingerprint,
            **evidence,  # type: ignore[arg-type]
        )
