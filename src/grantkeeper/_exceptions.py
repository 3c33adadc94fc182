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
"""

from __future__ import annotations

import re
from typing import ClassVar

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
]

# Anything that looks like a token (long run of token characters) is cut out of provider-supplied text
# before it reaches a message: some servers echo the presented token in error_description.
_TOKENISH = re.compile(r"[A-Za-z0-9\-_.~+/=]{20,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def sanitize_provider_text(text: object, limit: int = 160) -> str:
    """Make provider-controlled text safe to show: no token-like runs, no control characters, bounded."""
    value = _CONTROL.sub(" ", str(text))
    value = _TOKENISH.sub("[redacted]", value)
    limit = max(limit, 1)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class GrantkeeperError(Exception):
    """Base of every error grantkeeper raises."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1

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


class ConfigurationError(GrantkeeperError):
    """Configuration, input, store file or key is wrong; fix it and run again. Nothing was sent."""

    code = "configuration"
    exit_code = 3


class TLSVerificationFailed(ConfigurationError):
    """The provider's TLS certificate did not verify against the trusted CAs; nothing was sent (the handshake
    failed before the request). Give the CA with ``--ca-bundle`` or ``SSL_CERT_FILE``."""

    code = "tls_verification_failed"


class UnknownGrant(ConfigurationError):
    code = "unknown_grant"


class UnknownProvider(ConfigurationError):
    code = "unknown_provider"

    def __init__(self, message: str, *, provider: str | None = None, **evidence: object) -> None:
        super().__init__(message, **evidence)  # type: ignore[arg-type]
        self.provider = provider  # the name that was not found


class EncryptionKeyError(ConfigurationError):
    """The encryption key is missing or is not the key this store was created with."""

    code = "key_error"


class StoreFormatError(ConfigurationError):
    """The store file is corrupt, not a grantkeeper store, or written by a newer grantkeeper."""

    code = "store_format"


class TokenInputError(ConfigurationError):
    """What was given as a refresh token is not a single RFC 6749 token value (a JSON document, a header, several
    words, control characters...). The message describes its shape, never its value; nothing was stored."""

    code = "token_input"


class SpentRefreshToken(ConfigurationError):
    """The refresh token to import was spent by a refresh grantkeeper recorded: a rotating provider would refuse
    it (and one that detects reuse would revoke the whole grant). Nothing was stored."""

    code = "spent_refresh_token"


class BundleError(ConfigurationError):
    """The file is not a bundle this grantkeeper reads: damaged, truncated, or of an unknown version."""

    code = "bundle"


class BundleAuthError(BundleError):
    """The bundle does not open: wrong passphrase or key, or its bytes were changed."""

    code = "bundle_auth"


class BundleConflict(BundleError):
    """Importing would replace grants that already exist here, and replacing was not asked for."""

    code = "bundle_conflict"


class ClientAuthFailed(GrantkeeperError):
    """The provider rejected our client credentials (invalid_client / unauthorized_client)."""

    code = "client_auth_failed"
    exit_code = 4


class NeedsReauth(GrantkeeperError):
    """The grant can no longer be refreshed; a user must authorize again and the grant be re-imported."""

    code = "needs_reauth"
    exit_code = 5


class RevokedOrExpired(NeedsReauth):
    code = "revoked_or_expired"


class LostInFlight(NeedsReauth):
    code = "lost_in_flight"


class ReuseDetected(NeedsReauth):
    code = "reuse_detected"


class TransientError(GrantkeeperError):
    """A temporary condition; retry later. ``retry_after`` is the suggested wait in seconds, if known."""

    code = "transient"
    exit_code = 6

    def __init__(self, message: str, *, retry_after: float | None = None, **evidence: object) -> None:
        super().__init__(message, **evidence)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderUnavailable(TransientError):
    code = "provider_unavailable"


class StoreUnavailable(TransientError):
    code = "store_unavailable"
    exit_code = 7


class LeaseTimeout(TransientError):
    code = "lease_timeout"
    exit_code = 8


class ConsentTimeout(TransientError):
    code = "consent_timeout"


class MalformedResponse(GrantkeeperError):
    code = "malformed_response"
    exit_code = 9


class ProviderRejected(GrantkeeperError):
    code = "provider_rejected"
    exit_code = 10


class ConsentFailed(ProviderRejected):
    code = "consent_failed"


class ConsentDenied(ConsentFailed):
    code = "consent_denied"


class StaleLocalToken(GrantkeeperError):
    code = "stale_local_token"
    exit_code = 11
