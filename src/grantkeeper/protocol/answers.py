"""Read a token-endpoint answer into a value: success, OAuth error, transient, or malformed. Pure.

Tolerant where real servers differ and the meaning is unambiguous (documented in docs/parsing.md):
``expires_in`` as a numeric string; ``expires_in`` missing but the access token a JWT (its ``exp`` claim,
unverified, is the lifetime hint; with neither, the provider profile's default applies); ``token_type``
missing (taken as Bearer) or in any case; ``scope`` as a list; an empty ``refresh_token`` treated as absent;
form-encoded bodies; a 200 that carries ``error``; known aliases of ``invalid_grant`` (Slack
``invalid_refresh_token``, GitHub ``bad_refresh_token``).
Strict where a guess could lose or corrupt a grant: anything else is `Malformed` with a reason that never
quotes the body. Token values are checked against RFC 6749/6750 syntax (`access_token_ok`, `refresh_token_ok`)
so that nothing a provider (or a proxy in front of it) sends can reach a header or a terminal.

A `Malformed` 2xx answer still carries its refresh token (`Malformed.successor`) when that is an intact string:
the provider has already rotated, so that token is the one piece of state that cannot be had again.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeAlias
from urllib.parse import parse_qsl

from grantkeeper._exceptions import sanitize_provider_text
from grantkeeper._secrets import Secret
from grantkeeper.model.exchange import HttpReply
from grantkeeper.model.tokens import MAX_TOKEN_CHARS, TokenSet, access_token_ok, refresh_token_ok

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_EXPIRES_IN",
    "HttpReply",
    "Interpretation",
    "Malformed",
    "OAuthFailure",
    "Success",
    "Transient",
    "access_token_ok",
    "as_number",
    "decode_object",
    "interpret",
    "parse_retry_after",
    "refresh_token_ok",
]

MAX_BODY_BYTES = 256 * 1024
#: ``expires_in`` above this (a year) is clamped: no real access token lives longer, and a huge value would
#: pin a token in caches forever.
MAX_EXPIRES_IN = 366 * 86400.0

_ERROR_ALIASES = {"invalid_refresh_token": "invalid_grant", "bad_refresh_token": "invalid_grant"}
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
#: RFC 6749 §5.2 and common extension codes, passed through verbatim; anything else is sanitized.
_KNOWN_ERRORS = _TRANSIENT_ERRORS | {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "invalid_token",
    "insufficient_scope",
    "interaction_required",
    "consent_required",
    "login_required",
    "invalid_target",
    "invalid_dpop_proof",
    "use_dpop_nonce",
    "expired_token",
    "unsupported_response_type",
    "authorization_pending",
}


@dataclass(frozen=True, slots=True)
class Success:
    token_set: TokenSet


@dataclass(frozen=True, slots=True)
class OAuthFailure:
    error: str  # RFC 6749 §5.2 code, aliases resolved
    description: str  # sanitized, safe to show
    status: int


@dataclass(frozen=True, slots=True)
class Transient:
    status: int
    error: str | None
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class Malformed:
    """Not a usable token response. `successor`: the intact new refresh token a 2xx body carried anyway (to be
    committed: the provider has already rotated); `successor_expires_in`: its stated lifetime, if any."""

    reason: str
    status: int
    successor: Secret | None = None
    successor_expires_in: float | None = None


Interpretation: TypeAlias = Success | OAuthFailure | Transient | Malformed


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now)


def decode_object(reply: HttpReply) -> dict[str, object] | None:
    """The body as an object: JSON, or a form-encoded body when the server says so; None for anything else."""
    ctype = reply.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(reply.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            return None
    try:
        data = json.loads(reply.body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def as_number(value: object) -> float | None:
    """A finite non-negative number, also from a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = min(value, 2**53)  # beyond any clamp, and float() of a huge int would overflow
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _intact(value: object) -> str | None:
    """A refresh token worth keeping even from a broken answer: a non-blank string that can be stored and sent
    (encodable, bounded). Characters outside RFC 6749 syntax do not disqualify it: it only travels form-encoded,
    and throwing it away would lose a grant the provider has already rotated."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TOKEN_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: cannot be stored or sent
        return None
    return value


def _jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds until the ``exp`` claim of a JWT access token; None if it is not a JWT with a numeric exp.

    The signature is not checked: the token is the resource server's business, and a forged ``exp`` could only
    make us refresh early or serve a token the resource server then rejects (a 401 invalidates it, I4).
    """
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    exp = as_number(claims.get("exp")) if isinstance(claims, dict) and not isinstance(claims.get("exp"), str) else None
    return None if exp is None else min(max(0.0, exp - now), MAX_EXPIRES_IN)


def _scope(value: object) -> tuple[str, ...] | bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return False


def interpret(reply: HttpReply, now: float) -> Interpretation:
    """What `reply` means. Only a 200 can be a `Success`; any 2xx that is not one is `Malformed`, keeping the
    successor refresh token it carries."""
    status = reply.status
    if reply.truncated:
        return Malformed(f"response body larger than {MAX_BODY_BYTES} bytes", status)
    if 300 <= status < 400:
        return Malformed(f"HTTP {status} redirect from the token endpoint; check the provider's token URL", status)
    data = decode_object(reply)
    failure = _failure(data, status, parse_retry_after(reply.headers.get("retry-after"), now))
    if failure is not None:
        return failure
    if not 200 <= status < 300:
        return Malformed(f"HTTP {status} without an OAuth error body", status)
    if data is None:
        return Malformed("body is not a JSON object", status)
    return _token_response(data, status, now)


def _failure(data: dict[str, object] | None, status: int, retry_after: float | None) -> OAuthFailure | Transient | None:
    """An OAuth error body (on a 200 too, if it carries no access token), or a status that says "later"."""
    error = data.get("error") if data is not None else None
    if data is not None and isinstance(error, str) and error and (status >= 400 or "access_token" not in data):
        code = _ERROR_ALIASES.get(error, error)
        if code not in _KNOWN_ERRORS:
            # Provider-controlled text that ends up in messages: sanitize it like a description.
            code = sanitize_provider_text(code, 64)
        if code in _TRANSIENT_ERRORS or status >= 500 or status == 429:
            return Transient(status, code, retry_after)
        return OAuthFailure(code, sanitize_provider_text(data.get("error_description") or ""), status)
    if status == 429 or status >= 500 or status == 408:
        return Transient(status, None, retry_after)
    return None


def _token_response(data: dict[str, object], status: int, now: float) -> Success | Malformed:
    """A 2xx body without an OAuth error: a usable token response, or why not (keeping its new refresh token)."""
    rt_value = data.get("refresh_token")
    rt_expires = data.get("refresh_token_expires_in", data.get("x_refresh_token_expires_in"))
    rt_lifetime = as_number(rt_expires) if rt_expires is not None else None
    successor = _intact(rt_value) if rt_value != "" else None
    refused = _refusal(data, successor) if status == 200 else f"HTTP {status} instead of 200 for a token response"
    if refused is not None:
        return Malformed(refused, status, Secret(successor) if successor else None, rt_lifetime)
    access = data["access_token"]
    assert isinstance(access, str)
    expires_in = as_number(data["expires_in"]) if data.get("expires_in") is not None else _jwt_lifetime(access, now)
    scope = _scope(data.get("scope"))
    id_token = data.get("id_token")
    return Success(
        TokenSet(
            access_token=Secret(access),
            token_type="Bearer",
            expires_in=None if expires_in is None else min(expires_in, MAX_EXPIRES_IN),
            refresh_token=Secret(successor) if successor else None,
            scope=scope if isinstance(scope, tuple) else None,
            id_token=Secret(id_token) if isinstance(id_token, str) and id_token else None,
            refresh_token_expires_in=rt_lifetime,
        )
    )


def _refusal(data: dict[str, object], successor: str | None) -> str | None:
    """Why a 200 body is not a usable token response (None if it is). Never quotes a value."""
    return _access_refusal(data) or _refresh_refusal(data.get("refresh_token"), successor) or _extras_refusal(data)


def _access_refusal(data: dict[str, object]) -> str | None:
    """What is wrong with the access token, its type or its lifetime."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        return "no access_token string in the response"
    if not access_token_ok(access):
        return (
            "access_token contains characters outside RFC 6750 token syntax (control characters, spaces or "
            f"non-ASCII) or is longer than {MAX_TOKEN_CHARS} characters; it was discarded, never served"
        )
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return f"token_type {sanitize_provider_text(token_type, 20)!r} is not Bearer"
    if data.get("expires_in") is not None and as_number(data["expires_in"]) is None:
        return "expires_in is not a non-negative number"
    return None


def _refresh_refusal(refresh: object, successor: str | None) -> str | None:
    """What is wrong with the refresh token (`successor`: the same value if it is worth keeping anyway)."""
    if refresh is not None and not isinstance(refresh, str):
        return "refresh_token is not a string"
    if not isinstance(refresh, str) or not refresh:
        return None
    if successor is None:
        return f"refresh_token is blank, longer than {MAX_TOKEN_CHARS} characters or not encodable"
    if not refresh_token_ok(refresh):
        return "refresh_token contains characters outside RFC 6749 token syntax (control characters or non-ASCII)"
    return None


def _extras_refusal(data: dict[str, object]) -> str | None:
    """What is wrong with the optional members: scope and id_token."""
    if _scope(data.get("scope")) is False:
        return "scope is neither a string nor a list of strings"
    id_token = data.get("id_token")
    if id_token is not None and not isinstance(id_token, str):
        return "id_token is not a string"
    return None
