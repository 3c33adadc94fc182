"""The device authorization grant (RFC 8628), sans I/O.

`authorization_request` builds the client-authenticated POST to the device authorization endpoint (§3.1);
`authorization_from_reply` reads its answer into a `DeviceAuthorization` (§3.2); `token_request` builds one poll
of the token endpoint (§3.4); `poll_step` maps the token endpoint's answer to the next step (§3.5): wait and poll
again, or done with a `TokenSet`, or a typed error. No function here reads the network or the clock, or sleeps:
the driver (`grantkeeper.consent.connect_device`) does, and measures the device code's lifetime.

What happens when the provider is unavailable while polling (5xx, 429, ``temporarily_unavailable``, no answer):
polling goes on, backing off exponentially from the interval (doubling per consecutive failure, capped at
`MAX_BACKOFF`, at least any ``Retry-After``), as §3.5 asks for timeouts; the device code's expiry bounds it, and
the timeout then says the provider was unavailable. A user who approved meanwhile loses nothing but the wait.

The device code is a secret (it redeems the grant): it is held in `Secret` and never appears in a message. The
user code and the verification URIs are meant to be shown to the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

import httpx

from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    ConsentDenied,
    ConsentTimeout,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
)
from grantkeeper._secrets import Secret
from grantkeeper.consent.flow import require_refresh_token
from grantkeeper.model import Provider, TokenSet
from grantkeeper.protocol.answers import (
    HttpReply,
    Malformed,
    OAuthFailure,
    Success,
    Transient,
    as_number,
    decode_object,
    interpret,
)
from grantkeeper.tokens.request import build_client_request
from grantkeeper.tokens.transport import SendResult

__all__ = [
    "DEFAULT_INTERVAL",
    "DEVICE_CODE_GRANT",
    "MAX_BACKOFF",
    "SLOW_DOWN_STEP",
    "DeviceAuthorization",
    "Done",
    "PollStep",
    "Wait",
    "authorization_from_reply",
    "authorization_request",
    "poll_step",
    "token_request",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0  # RFC 8628 §3.2: "If no value is provided, clients MUST use 5 as the default"
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: slow_down adds 5 seconds to the interval for this and all later polls
MAX_BACKOFF = 60.0
#: A device code living longer than a day is a server's mistake; polling a day is already more than anyone waits.
_MAX_EXPIRES_IN = 86400.0
#: A server-stated interval is a minimum; below a second, a typo would turn polling into a flood.
_MIN_INTERVAL = 1.0
_MAX_INTERVAL = 300.0
_MAX_USER_CODE = 64


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """The device authorization response (RFC 8628 §3.2): what to show the user, and what to poll with."""

    provider: str
    device_code: Secret
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float  # seconds the device code lives, from when the request was sent
    interval: float  # seconds between polls to start with
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Poll again after `seconds`; `interval` and `failures` (consecutive unavailable answers) carry over."""

    seconds: float
    interval: float
    failures: int
    reason: str  # "authorization_pending", "slow_down" or "unavailable" (safe to show)


@dataclass(frozen=True, slots=True)
class Done:
    token_set: TokenSet


PollStep: TypeAlias = Wait | Done


def authorization_request(provider: Provider, *, scopes: tuple[str, ...] = ()) -> httpx.Request:
    """The POST to the device authorization endpoint, authenticated as the provider's refreshes are (RFC 8628
    §3.1 allows any client authentication the server requires). Holds secrets: never log it."""
    if provider.device_authorization_url is None:
        raise ConfigurationError(
            f"provider {provider.name!r} has no device authorization endpoint, so 'connect --device' cannot start; "
            f"set it with 'grantkeeper provider add {provider.name} --device-authorization-url URL', or read it "
            f"from the server's metadata with 'grantkeeper provider discover {provider.name} --issuer URL'"
        )
    # client_id goes in the body whatever the authentication: §3.1 requires it of public clients, and servers
    # (django-oauth-toolkit among them) read it from there for confidential ones too.
    form = {"client_id": provider.client_id}
    if scopes:
        form["scope"] = " ".join(scopes)
    return build_client_request(provider, form, url=provider.device_authorization_url)


def token_request(provider: Provider, authorization: DeviceAuthorization) -> httpx.Request:
    """One poll of the token endpoint (RFC 8628 §3.4). Holds secrets: never log it."""
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code.reveal()}
    return build_client_request(provider, form)


def _seconds(value: object) -> float | None:
    """A positive finite number of seconds (also from a numeric string, as some servers send); None otherwise."""
    number = as_number(value)
    return number if number else None


def _shown_uri(value: object) -> str | None:
    """A URI we may print and open in a browser: absolute https, or http on loopback, without control
    characters or spaces (it goes to a terminal and to the system's URL opener)."""
    if not isinstance(value, str) or not value or len(value) > 2048 or not value.isprintable() or " " in value:
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return None
    secure = parts.scheme == "https" or (parts.scheme == "http" and host in ("127.0.0.1", "localhost", "::1"))
    return value if secure and parts.netloc else None


def _parse_authorization(name: str, data: dict[str, object], scopes: tuple[str, ...]) -> DeviceAuthorization:
    where = f"provider {name!r} answered the device authorization request with"
    device_code = data.get("device_code")
    if not isinstance(device_code, str) or not device_code:
        raise MalformedResponse(f"{where} no device_code string; check --device-authorization-url")
    user_code = data.get("user_code")
    if not isinstance(user_code, str) or not user_code or len(user_code) > _MAX_USER_CODE:
        raise MalformedResponse(f"{where} no user_code string of at most {_MAX_USER_CODE} characters")
    if not user_code.isprintable():
        raise MalformedResponse(f"{where} a user_code holding control characters")
    # Google's device flow names it verification_url (a draft's name); the meaning is the same.
    verification_uri = _shown_uri(data.get("verification_uri", data.get("verification_url")))
    if verification_uri is None:
        raise MalformedResponse(f"{where} no verification_uri that is an absolute https URL")
    complete = data.get("verification_uri_complete")
    verification_uri_complete = _shown_uri(complete) if complete is not None else None
    if complete is not None and verification_uri_complete is None:
        raise MalformedResponse(f"{where} a verification_uri_complete that is not an absolute https URL")
    expires_in = _seconds(data.get("expires_in"))
    if expires_in is None:
        raise MalformedResponse(f"{where} no positive expires_in")
    interval = DEFAULT_INTERVAL
    if data.get("interval") is not None:
        stated = _seconds(data["interval"])
        if stated is None:
            raise MalformedResponse(f"{where} an interval that is not a positive number")
        interval = min(max(stated, _MIN_INTERVAL), _MAX_INTERVAL)
    return DeviceAuthorization(
        provider=name, device_code=Secret(device_code), user_code=user_code, verification_uri=verification_uri,
        verification_uri_complete=verification_uri_complete, expires_in=min(expires_in, _MAX_EXPIRES_IN),
        interval=interval, scopes=scopes,
    )  # fmt: skip


def authorization_from_reply(
    provider: Provider, reply: HttpReply, *, scopes: tuple[str, ...], now: float
) -> DeviceAuthorization:
    """The device authorization from the endpoint's answer, or a typed error saying why there is none."""
    name = provider.name
    if reply.status == 200 and not reply.truncated:
        data = decode_object(reply)
        if data is not None and "error" not in data:
            return _parse_authorization(name, data, scopes)
    outcome = interpret(reply, now)
    if isinstance(outcome, OAuthFailure):
        detail = outcome.error + (f": {outcome.description}" if outcome.description else "")
        if outcome.error in ("invalid_client", "unauthorized_client"):
            raise ClientAuthFailed(
                f"provider {name!r} refused the client for the device authorization request ({detail}); check "
                "that the client exists, may use the device grant, and that its credentials are right ('grantkeeper "
                "provider add')",
                oauth_error=outcome.error,
            )
        raise ProviderRejected(
            f"provider {name!r} refused the device authorization request ({detail}); nothing was stored",
            oauth_error=outcome.error,
        )
    if isinstance(outcome, Transient):
        raise ProviderUnavailable(
            f"provider {name!r} could not start the device flow now (HTTP {outcome.status}); start "
            "'grantkeeper connect --device' again later",
            retry_after=outcome.retry_after, oauth_error=outcome.error,
        )  # fmt: skip
    reason = outcome.reason if isinstance(outcome, Malformed) else "a token response where none belongs"
    raise MalformedResponse(f"provider {name!r} answered the device authorization request with {reason}")


def _backoff(interval: float, failures: int, retry_after: float | None) -> float:
    return max(min(interval * 2.0**failures, MAX_BACKOFF), interval, retry_after or 0.0)


def poll_step(provider: Provider, result: SendResult, *, interval: float, failures: int, now: float) -> PollStep:
    """The next step after one poll (RFC 8628 §3.5). `interval` is the polling interval in force and `failures`
    the unavailable answers in a row before this one.

    Raises:
        ConsentDenied: the user (or the server's policy) refused: ``access_denied``.
        ConsentTimeout: the device code expired: ``expired_token``.
        ClientAuthFailed: ``invalid_client`` / ``unauthorized_client``.
        ProviderRejected: any other OAuth error, or tokens without a refresh token.
        MalformedResponse: an answer that is neither a token response nor an OAuth error.
    """
    if not isinstance(result, HttpReply):  # no answer: the network or the server is down for now
        failures += 1
        return Wait(_backoff(interval, failures, None), interval, failures, "unavailable")
    outcome = interpret(result, now)
    name = provider.name
    if isinstance(outcome, Success):
        return Done(require_refresh_token(provider, outcome.token_set))
    if isinstance(outcome, Transient):
        if outcome.error == "slow_down":
            slower = interval + SLOW_DOWN_STEP
            return Wait(slower, slower, failures, "slow_down")
        failures += 1
        return Wait(_backoff(interval, failures, outcome.retry_after), interval, failures, "unavailable")
    if isinstance(outcome, Malformed):
        raise MalformedResponse(f"provider {name!r} answered a device flow poll with {outcome.reason}")
    error = outcome.error
    if error == "authorization_pending":
        return Wait(interval, interval, 0, error)
    detail = error + (f": {outcome.description}" if outcome.description else "")
    if error == "access_denied":
        raise ConsentDenied(
            f"provider {name!r}: consent was refused (the user pressed Deny, or the server's policy refused this "
            f"client) ({detail}); nothing was stored",
            oauth_error=error,
        )
    if error == "expired_token":
        raise ConsentTimeout(
            f"provider {name!r}: the device code expired before the user approved it ({detail}); nothing was "
            "stored. Start 'grantkeeper connect --device' again and enter the new code",
            oauth_error=error,
        )
    if error in ("invalid_client", "unauthorized_client"):
        raise ClientAuthFailed(
            f"provider {name!r} refused the client credentials while polling for the device grant ({detail}); fix "
            "them with 'grantkeeper provider add'",
            oauth_error=error,
        )
    raise ProviderRejected(
        f"provider {name!r} refused the device flow poll ({detail}); nothing was stored. Start 'grantkeeper "
        "connect --device' again",
        oauth_error=error,
    )
