"""Giving and withdrawing consent: connect a new grant through the user's browser, revoke one at the provider.

`connect` runs the authorization code grant with PKCE (S256) and a loopback redirect (RFC 8252 §7.3), then
stores the grant exactly as `Keeper.import_grant` does. `revoke` revokes a grant's refresh token at the
provider (RFC 7009), then removes the grant locally. The protocol steps are in `grantkeeper.consent.flow`
(no I/O), the listener in `grantkeeper.consent.loopback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
    TransientError,
    UnknownGrant,
)
from grantkeeper._secrets import Secret
from grantkeeper.consent.flow import AuthorizationRequest, begin, code_from_redirect, exchange_request
from grantkeeper.consent.flow import tokens_from_reply as _tokens_from_reply
from grantkeeper.consent.loopback import LoopbackListener
from grantkeeper.engine import Keeper
from grantkeeper.model import Grant, Provider, check_name
from grantkeeper.profiles import get_profile
from grantkeeper.stores.base import GenerationConflict
from grantkeeper.tokens.request import build_client_request
from grantkeeper.tokens.response import HttpReply, interpret
from grantkeeper.tokens.transport import NotSent, send

__all__ = ["DEFAULT_CONSENT_TIMEOUT", "Connected", "connect", "revoke"]

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
    check_name(name, "grant")  # before the consent: a refused name after the exchange would waste the new token
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


def revoke(keeper: Keeper, name: str, *, local_only: bool = False, http: httpx.Client | None = None) -> Grant:
    """Revoke grant `name`'s refresh token at its provider (RFC 7009), then delete the grant; returns the
    grant as it was. With `local_only`, only delete it.

    Raises:
        ConfigurationError: the provider has no revocation endpoint (nothing is deleted).
        ClientAuthFailed / ProviderRejected / ProviderUnavailable / MalformedResponse: the provider did not
            confirm the revocation (nothing is deleted).
    """
    keeper.store.replay_recovery(now=keeper.clock.now())  # a successor kept locally is the token to revoke
    grant, provider = keeper.store.get_grant_and_provider(name)
    if not local_only:
        _revoke_at_provider(provider, grant, http)
    try:
        # Only the generation whose token was revoked: a refresh that committed meanwhile holds a live token.
        keeper.store.delete_grant(name, expected_generation=grant.generation)
    except GenerationConflict as moved:
        raise TransientError(
            f"grant {name!r} was refreshed while it was being revoked: refresh token {grant.refresh_fp} was revoked, "
            f"but the grant now holds a newer one (generation {moved.generation}), so it was kept. Stop the workers "
            "using it and run the command again",
            grant=name, generation=moved.generation,
        ) from None  # fmt: skip
    return grant


def _revoke_at_provider(provider: Provider, grant: Grant, http: httpx.Client | None) -> None:
    if provider.revocation_url is None:
        raise ConfigurationError(
            f"provider {provider.name!r} has no revocation endpoint, so grant {grant.name!r} cannot be revoked at "
            f"the provider; nothing was removed. Set one with 'grantkeeper provider add {provider.name} "
            "--revocation-url URL', revoke the consent in the provider's account page, or give --local-only to "
            "only forget the grant here",
            grant=grant.name,
        )
    if grant.refresh_token is None:
        return  # nothing left to revoke (a grant whose token was already dropped)
    form = {"token": grant.refresh_token.reveal(), "token_type_hint": "refresh_token"}
    request = build_client_request(provider, form, url=provider.revocation_url)
    client = http or _http()
    try:
        reply = _reply(send(client, request, budget=_BUDGET), provider, "revocation request")
    finally:
        if http is None:
            client.close()
    if 200 <= reply.status < 300:  # RFC 7009 §2.2 says 200 (also for a token already invalid); some send 204
        logger.info("grant %s: refresh token %s revoked at %s", grant.name, grant.refresh_fp, provider.name)
        return
    outcome = interpret(reply, 0.0)
    error = getattr(outcome, "error", None)
    where = f"provider {provider.name!r} did not revoke grant {grant.name!r} (HTTP {reply.status}"
    where += f", {error})" if error else ")"
    if error == "invalid_client":
        raise ClientAuthFailed(f"{where}: fix the client credentials; nothing was removed", oauth_error=error)
    if reply.status in (429, 503) or reply.status >= 500:
        raise ProviderUnavailable(f"{where}; try again later; nothing was removed", oauth_error=error)
    if error is None:
        raise MalformedResponse(f"{where}: not an OAuth answer; nothing was removed")
    raise ProviderRejected(f"{where}; nothing was removed", oauth_error=error)
