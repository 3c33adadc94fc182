"""Giving consent: connect a new grant through the user's browser.

`connect` runs the authorization code grant with PKCE (S256) and a loopback redirect (RFC 8252 §7.3), then
stores the grant exactly as `Keeper.import_grant` does. The protocol steps are in `grantkeeper.consent.flow`
(no I/O), the listener in `grantkeeper.consent.loopback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from grantkeeper._exceptions import (
    ConfigurationError,
    ProviderUnavailable,
    UnknownGrant,
)
from grantkeeper._secrets import Secret
from grantkeeper.consent.flow import AuthorizationRequest, begin, code_from_redirect, exchange_request
from grantkeeper.consent.flow import tokens_from_reply as _tokens_from_reply
from grantkeeper.consent.loopback import LoopbackListener
from grantkeeper.engine import Keeper
from grantkeeper.model import Grant, Provider
from grantkeeper.profiles import get_profile
from grantkeeper.tokens.response import HttpReply
from grantkeeper.tokens.transport import NotSent, send

__all__ = ["DEFAULT_CONSENT_TIMEOUT", "Connected", "connect"]

logger = logging.getLogger("grantkeeper")

_BUDGET = 30.0  # seconds for the code exchange or the revocation request
DEFAULT_CONSENT_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Connected:
    grant: Grant
    replaced: bool


def _http() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(_BUDGET, connect=5.0), follow_redirects=False, trust_env=False)


def _exists(keeper: Keeper, name: str) -> bool:
    try:
        keeper.store.get_grant(name)
    except UnknownGrant:
        return False
    return True


def _profile_defaults(provider: Provider) -> tuple[tuple[str, ...], dict[str, str]]:
    """The scopes and extra authorization parameters of the provider's profile, if it came from one."""
    if provider.profile is None:
        return (), {}
    try:
        profile = get_profile(provider.profile)
    except ConfigurationError:
        return (), {}  # a profile this version no longer ships: the provider's own fields still work
    return tuple(profile.scopes or ()), dict(profile.authorize_params or {})


def _reply(result: object, provider: Provider, what: str) -> HttpReply:
    if isinstance(result, HttpReply):
        return result
    sent = "" if isinstance(result, NotSent) else " (it may have been received)"
    reason = getattr(result, "reason", "no answer")
    raise ProviderUnavailable(f"provider {provider.name!r}: the {what} got no answer{sent}: {reason}")


def connect(
    keeper: Keeper,
    name: str,
    *,
    provider: str,
    scopes: tuple[str, ...] = (),
    replace: bool = False,
    timeout: float = DEFAULT_CONSENT_TIMEOUT,
    show: Callable[[AuthorizationRequest], None],
    http: httpx.Client | None = None,
) -> Connected:
    """Connect grant `name` of `provider` through the user's browser and store it.

    `show` is called once with the authorization request, whose ``url`` the user must open (the CLI opens the
    system browser or prints it); this call then waits up to `timeout` seconds for the redirect. Scopes
    default to the provider's profile's. An existing grant `name` is replaced only with `replace`.

    Raises:
        ConfigurationError: the grant exists (without `replace`), or the provider has no authorization URL.
        ConsentDenied / ConsentFailed: the redirect carried an error, or a ``state`` that is not this request's.
        ConsentTimeout: no redirect arrived in time.
        ClientAuthFailed / ProviderRejected / ProviderUnavailable / MalformedResponse: the code exchange failed.
    """
    chosen = keeper.store.get_provider(provider)
    existed = _exists(keeper, name)
    if existed and not replace:
        raise ConfigurationError(
            f"grant {name!r} already exists; give --replace to replace it with the new consent (its current refresh "
            "token is then dropped), or choose another name",
            grant=name,
        )
    default_scopes, extra = _profile_defaults(chosen)
    with LoopbackListener() as listener:
        request = begin(chosen, listener.redirect_uri, scopes=scopes or default_scopes, extra_params=extra)
        show(request)
        found: list[Secret] = []
        listener.wait(lambda query: found.append(code_from_redirect(request, query)), timeout=timeout)
    code = found[0]
    client = http or _http()
    try:
        reply = _reply(send(client, exchange_request(chosen, request, code), budget=_BUDGET), chosen, "code exchange")
    finally:
        if http is None:
            client.close()
    tokens = _tokens_from_reply(chosen, reply, keeper.clock.now())
    assert tokens.refresh_token is not None
    granted = tokens.scope if tokens.scope is not None else request.scopes
    grant = keeper.import_grant(name, provider=provider, refresh_token=tokens.refresh_token, scopes=granted)
    logger.info("grant %s connected (provider %s, refresh token %s)", name, provider, grant.refresh_fp)
    return Connected(grant, existed)
