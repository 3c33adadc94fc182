"""Every failure becomes an RFC 9457 ``application/problem+json`` answer here, and only here.

`STATUS` maps each `GrantkeeperError` code to an HTTP status; docs/serve.md has the table with the reasons, and
tests/serve/test_errors.py checks that every code in `grantkeeper._exceptions` has a row. A problem body is::

    {"type": "urn:grantkeeper:problem:<code>", "title": ..., "status": ..., "detail": <the message>,
     "code": <grantkeeper's code>, "doctor_class": <the doctor's cause, or null>, "grant": ..., "evidence": {...}}

Messages and evidence of `GrantkeeperError` never hold a token (I6); anything else that escapes a route is a
bug, answered 500 with its type name only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from grantkeeper._exceptions import GrantkeeperError, TransientError
from grantkeeper.redact import scrub_text

__all__ = ["DOCTOR_CLASS", "PROBLEM_TYPE", "STATUS", "ServeError", "conceal", "problem", "problem_for", "status_for"]

# A URN, not a URL: no domain is claimed, and `code` carries the same name for clients that branch on it.
PROBLEM_TYPE = "urn:grantkeeper:problem:"
MEDIA_TYPE = "application/problem+json"

#: GrantkeeperError.code -> HTTP status. A code without a row falls back to its nearest ancestor's (see
#: `status_for`); the test requires a row for every code.
STATUS: dict[str, int] = {
    # The caller named something that does not exist.
    "unknown_grant": 404,
    # The server's own configuration, store or key is wrong: permanent, nothing the caller can change.
    "error": 500,
    "configuration": 500,
    "unknown_provider": 500,
    "key_error": 500,
    "store_format": 500,
    "bundle": 500,
    "bundle_auth": 500,
    "bundle_conflict": 500,
    "stale_local_token": 500,
    "token_input": 500,
    "spent_refresh_token": 500,
    # The grant's state forbids the request until a person acts: re-consent.
    "needs_reauth": 409,
    "revoked_or_expired": 409,
    "lost_in_flight": 409,
    "reuse_detected": 409,
    # The authorization server refused us or answered nonsense: an upstream failure that retrying will not fix.
    "client_auth_failed": 502,
    "malformed_response": 502,
    "provider_rejected": 502,
    "consent_failed": 502,
    "consent_denied": 502,
    "tls_verification_failed": 502,
    # Temporary: retry after Retry-After.
    "transient": 503,
    "provider_unavailable": 503,
    "store_unavailable": 503,
    "lease_timeout": 504,
    "consent_timeout": 504,
    # The proxy (/v1/proxy): the caller's request, the provider's API, or a provider without an API base URL.
    "proxy_path_refused": 400,
    "proxy_request_too_large": 413,
    "proxy_not_configured": 409,
    "proxy_error": 502,
    "upstream_unreachable": 502,
    "upstream_too_large": 502,
    "upstream_redirect_refused": 502,
    "upstream_timeout": 504,
    # Hosted connect (/v1/connect-sessions and the end user's pages): the service has no public URL; the grant
    # exists; a link or provider answer that is unknown, used, expired, or in a browser that did not open it.
    "connect_error": 400,
    "connect_not_configured": 409,
    "connect_grant_exists": 409,
    "connect_session_unknown": 404,
    "connect_session_used": 410,
    "connect_session_expired": 410,
    "connect_state_invalid": 400,
    "connect_browser_mismatch": 400,
}

#: The doctor's cause (docs/doctor.md) an error code stands for when the doctor cannot be asked about the grant.
DOCTOR_CLASS: dict[str, str] = {
    "stale_local_token": "stale_local_token",
    "lost_in_flight": "lost_in_flight",
    "reuse_detected": "reuse_detected",
    "revoked_or_expired": "revoked_or_expired",
    "client_auth_failed": "client_auth_failed",
    "provider_rejected": "provider_rejected",
    "provider_unavailable": "provider_unavailable",
    "malformed_response": "malformed_response",
    "configuration": "configuration",
    "unknown_provider": "configuration",
}

#: Seconds to suggest in Retry-After when a transient error does not know better.
DEFAULT_RETRY_AFTER = 1

# A run of token characters long enough to be a credential, with both upper- and lower-case letters (random
# base64url always has both; grant names rarely do).
_CREDENTIAL_LIKE = re.compile(r"[A-Za-z0-9\-_.~+/=]{24,}")


def _concealed(match: re.Match[str]) -> str:
    run = match.group(0)
    return "[redacted]" if any(c.isupper() for c in run) and any(c.islower() for c in run) else run


def conceal(text: str) -> str:
    """`text` with live secrets (`scrub_text`) and credential-like runs cut out: for what a caller put in a path,
    where a grant name goes, before it is echoed in an answer, a log line or the audit trail (I6: a client may put
    a token where it does not belong, and the keeper may no longer hold it)."""
    return _CREDENTIAL_LIKE.sub(_concealed, scrub_text(text))


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 410: "Gone", 413: "Content Too Large", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}  # fmt: skip


class ServeError(Exception):
    """A failure of the broker itself (authentication, authorization, rate limit, bad request), not the keeper."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def status_for(error: GrantkeeperError) -> int:
    for cls in type(error).__mro__:
        code = getattr(cls, "code", None)
        if isinstance(code, str) and code in STATUS:
            return STATUS[code]
    return 500


def problem(
    status: int, code: str, detail: str, *, doctor_class: str | None = None, grant: str | None = None,
    evidence: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    """(status, body, headers) of one problem answer."""
    # Scrubbed although messages hold no token (I6): a caller may have put one where a grant name goes.
    body: dict[str, Any] = {"type": PROBLEM_TYPE + code, "title": _TITLES.get(status, "Error"), "status": status,
                            "detail": conceal(detail), "code": code, "doctor_class": doctor_class}  # fmt: skip
    if grant is not None:
        body["grant"] = conceal(grant)
    if evidence:
        body["evidence"] = json.loads(conceal(json.dumps(evidence, default=str)))
    return status, json.dumps(body, default=str).encode(), {"content-type": MEDIA_TYPE, **(headers or {})}


def problem_for(error: GrantkeeperError, *, doctor_class: str | None) -> tuple[int, bytes, dict[str, str]]:
    """The answer for a keeper error; `doctor_class` is the doctor's verdict on the grant when it could be asked."""
    status = status_for(error)
    headers = {}
    if isinstance(error, TransientError):
        wait = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_AFTER
        headers["retry-after"] = str(max(1, math.ceil(wait)))
    return problem(status, error.code, error.message, doctor_class=doctor_class or DOCTOR_CLASS.get(error.code),
                   grant=error.grant, evidence=error.evidence(), headers=headers)  # fmt: skip
