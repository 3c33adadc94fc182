"""The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636), sans I/O.

`begin` makes the authorization request (a fresh ``state`` and S256 code verifier); `code_from_redirect` checks
what came back to the redirect URI (``state`` first, then ``error`` or ``code``); `exchange_request` builds the
client-authenticated POST that trades the code for tokens; `tokens_from_reply` turns the token endpoint's
answer into a `TokenSet` that must carry a refresh token. No function here reads the network or the clock.

The verifier and the code are secrets: they are held in `Secret` and never appear in a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    ConsentDenied,
    ConsentFailed,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
    sanitize_provider_text,
)
from grantkeeper._secrets import Secret
from grantkeeper.model import Provider, TokenSet
from grantkeeper.protocol.answers import HttpReply, Malformed, OAuthFailure, Success, Transient, interpret
from grantkeeper.tokens.request import build_client_request

__all__ = [
    "AuthorizationRequest",
    "begin",
    "code_from_redirect",
    "exchange_request",
    "require_refresh_token",
    "tokens_from_reply",
]

#: What the redirect's ``error`` means to the person at the terminal (RFC 6749 §4.1.2.1).
_REDIRECT_ERRORS = {
    "access_denied": "consent was refused (the user pressed Deny, or the server's policy refused this client)",
    "invalid_request": "the server found the authorization request malformed",
    "unauthorized_client": "this client may not use the authorization code grant; check the client's settings "
    "at the provider",
    "unsupported_response_type": "the server does not issue authorization codes to this client",
    "invalid_scope": "a requested scope is unknown or not allowed for this client; check --scope",
    "server_error": "the authorization server failed; try again",
    "temporarily_unavailable": "the authorization server is temporarily unavailable; try again later",
    "login_required": "the user is not logged in at the provider",
    "consent_required": "the provider needs the user's consent and could not ask for it",
    "interaction_required": "the provider needs the user to interact and could not ask",
}


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """One authorization request: where to send the browser, and what the answer must match."""

    provider: str
    url: str  # the authorization URL with its query; holds no secret (the challenge is public)
    redirect_uri: str
    state: str
    verifier: Secret
    scopes: tuple[str, ...]


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin(
    provider: Provider,
    redirect_uri: str,
    *,
    scopes: tuple[str, ...] = (),
    extra_params: Mapping[str, str] | None = None,
    state: str | None = None,
) -> AuthorizationRequest:
    """A new authorization request for `provider`: S256 PKCE, a random ``state`` (or `state`, unguessable, made by
    the caller), `scopes` and any extra parameters the provider needs for a refresh token (e.g.
    ``access_type=offline``)."""
    if provider.authorization_url is None:
        raise ConfigurationError(
            f"provider {provider.name!r} has no authorization endpoint; run 'grantkeeper provider add "
            f"{provider.name} --authorization-url URL' (or 'provider discover') first"
        )
    verifier = secrets.token_urlsafe(64)  # 86 characters: within RFC 7636's 43-128
    state = state or secrets.token_urlsafe(24)
    query = {**(extra_params or {})}
    query.update(
        response_type="code", client_id=provider.client_id, redirect_uri=redirect_uri, state=state,
        code_challenge=_challenge(verifier), code_challenge_method="S256",
    )  # fmt: skip
    if scopes:
        query["scope"] = " ".join(scopes)
    parts = urlsplit(provider.authorization_url)
    joined = "&".join(q for q in (parts.query, urlencode(query)) if q)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))
    return AuthorizationRequest(provider.name, url, redirect_uri, state, Secret(verifier), scopes)


def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise ConsentFailed(f"the redirect carried {key!r} more than once; start 'grantkeeper connect' again")
    return values[0]


def code_from_redirect(request: AuthorizationRequest, query: Mapping[str, list[str]]) -> Secret:
    """The authorization code from the redirect's query (parsed with `urllib.parse.parse_qs`).

    ``state`` is checked before anything else is believed (RFC 6749 §10.12): a redirect that does not answer
    this request, error or not, is refused.
    """
    state = _one(query, "state")
    if state is None or not hmac.compare_digest(state.encode(), request.state.encode()):
        raise ConsentFailed(
            "the redirect's state does not match this request (a stale tab, another connect, or a forged "
            "request); nothing was stored. Start 'grantkeeper connect' again and use the new URL"
        )
    error = _one(query, "error")
    if error is not None:
        code = sanitize_provider_text(error, 64)
        meaning = _REDIRECT_ERRORS.get(error, "the authorization server refused the request")
        description = sanitize_provider_text(_one(query, "error_description") or "")
        message = f"provider {request.provider!r}: {meaning} (error {code!r}" + (
            f": {description})" if description else ")"
        )
        cls = ConsentDenied if error == "access_denied" else ConsentFailed
        raise cls(message, oauth_error=code)
    code_value = _one(query, "code")
    if not code_value:
        raise ConsentFailed("the redirect carried neither a code nor an error; start 'grantkeeper connect' again")
    return Secret(code_value)


def exchange_request(provider: Provider, request: AuthorizationRequest, code: Secret) -> httpx.Request:
    """The token request that redeems `code` (RFC 6749 §4.1.3 with RFC 7636's verifier), authenticated as
    the provider's refreshes are. Holds secrets: never log it."""
    form = {
        "grant_type": "authorization_code", "code": code.reveal(), "redirect_uri": request.redirect_uri,
        "code_verifier": request.verifier.reveal(),
    }  # fmt: skip
    return build_client_request(provider, form)


def require_refresh_token(provider: Provider, token_set: TokenSet) -> TokenSet:
    """`token_set`, if it holds a refresh token; a consent that yields none leaves nothing to keep."""
    if token_set.refresh_token is None:
        raise ProviderRejected(
            f"provider {provider.name!r} issued an access token but no refresh token; many providers issue one only "
            "for an offline scope or parameter (e.g. --scope offline_access, or the profile's authorize "
            "parameters). Nothing was stored"
        )
    return token_set


def tokens_from_reply(provider: Provider, reply: HttpReply, now: float) -> TokenSet:
    """The token set from the code exchange's answer; it must hold a refresh token, or there is nothing to keep."""
    outcome = interpret(reply, now)
    name = provider.name
    if isinstance(outcome, Success):
        return require_refresh_token(provider, outcome.token_set)
    if isinstance(outcome, OAuthFailure):
        detail = f"{outcome.error}" + (f": {outcome.description}" if outcome.description else "")
        if outcome.error == "invalid_client":
            raise ClientAuthFailed(
                f"provider {name!r} refused the client credentials during the code exchange ({detail}); fix "
                "them with 'grantkeeper provider add'",
                oauth_error=outcome.error,
            )
        raise ProviderRejected(
            f"provider {name!r} refused the code exchange ({detail}); nothing was stored. Start 'grantkeeper "
            "connect' again",
            oauth_error=outcome.error,
        )
    if isinstance(outcome, Transient):
        raise ProviderUnavailable(
            f"provider {name!r} could not exchange the code now (HTTP {outcome.status}); start 'grantkeeper "
            "connect' again later",
            retry_after=outcome.retry_after,
            oauth_error=outcome.error,
        )
    assert isinstance(outcome, Malformed)
    raise MalformedResponse(f"provider {name!r} answered the code exchange with no token response: {outcome.reason}")
