"""Giving and withdrawing consent: connect a new grant through the user's browser, revoke one at the provider.

`connect` runs the authorization code grant with PKCE (S256) and a loopback redirect (RFC 8252 §7.3);
`connect_device` runs the device authorization grant (RFC 8628) for machines without a browser. Both store the
grant as `Keeper.import_grant` does, with the access token that came with it, so the first token read needs no
refresh. `revoke` revokes a grant's refresh token at the provider (RFC 7009), then removes the grant locally.
The protocol steps are in `grantkeeper.consent.flow` and `grantkeeper.consent.device` (no I/O), the listener
in `grantkeeper.consent.loopback`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    ConsentTimeout,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
    TransientError,
    UnknownGrant,
)
from grantkeeper._secrets import Secret
from grantkeeper.consent import device
from grantkeeper.consent.device import DeviceAuthorization, Done
from grantkeeper.consent.flow import AuthorizationRequest, begin, code_from_redirect, exchange_request
from grantkeeper.consent.flow import tokens_from_reply as _tokens_from_reply
from grantkeeper.consent.loopback import LoopbackListener
from grantkeeper.engine import Keeper
from grantkeeper.engine.ports import Store
from grantkeeper.model import Grant, Provider, TokenSet, check_name
from grantkeeper.model.provider import RESERVED_AUTHORIZE_PARAMS
from grantkeeper.profiles import get_profile
from grantkeeper.protocol.answers import HttpReply, interpret
from grantkeeper.stores.base import GenerationConflict
from grantkeeper.tokens import transport
from grantkeeper.tokens.request import build_client_request
from grantkeeper.tokens.transport import NotSent, SendResult, send

__all__ = [
    "DEFAULT_CONSENT_TIMEOUT",
    "Connected",
    "authorization",
    "connect",
    "connect_device",
    "consented",
    "exchange_code",
    "prepare",
    "revoke",
    "revoke_in",
]

logger = logging.getLogger("grantkeeper")

_BUDGET = 30.0  # seconds for the code exchange or the revocation request
DEFAULT_CONSENT_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Connected:
    grant: Grant
    replaced: bool


def _client(http: httpx.Client | None) -> contextlib.AbstractContextManager[httpx.Client]:
    """The caller's client, left open; or a client of our own, closed at the end."""
    if http is not None:
        return contextlib.nullcontext(http)
    return transport.client(timeout=httpx.Timeout(_BUDGET, connect=5.0))  # each request carries its provider's


def _exists(store: Store, name: str) -> bool:
    try:
        store.get_grant(name)
    except UnknownGrant:
        return False
    return True


def _profile_defaults(provider: Provider) -> tuple[tuple[str, ...], dict[str, str]]:
    """The scopes of the provider's profile, and the extra authorization parameters: the profile's, then the
    provider's own (``provider add --authorize-param``), which win."""
    own = dict(provider.authorize_params)
    if provider.profile is None:
        return (), own
    try:
        profile = get_profile(provider.profile)
    except ConfigurationError:
        return (), own  # a profile this version no longer ships: the provider's own fields still work
    return tuple(profile.scopes or ()), {**(profile.authorize_params or {}), **own}


def _reply(result: SendResult, provider: Provider, what: str) -> HttpReply:
    if isinstance(result, HttpReply):
        return result
    sent = "" if isinstance(result, NotSent) else " (it may have been received)"
    raise ProviderUnavailable(f"provider {provider.name!r}: the {what} got no answer{sent}: {result.reason}")


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
    authorize_params: Mapping[str, str] | None = None,
) -> Connected:
    """Connect grant `name` of `provider` through the user's browser and store it.

    `show` is called once with the authorization request, whose ``url`` the user must open (the CLI opens the
    system browser or prints it); this call then waits up to `timeout` seconds for the redirect. Scopes
    default to the provider's profile's. `authorize_params` are added to the authorization request over the
    profile's and the provider's own. An existing grant `name` is replaced only with `replace`.

    Raises:
        ConfigurationError: the grant exists (without `replace`), or the provider has no authorization URL.
        ConsentDenied / ConsentFailed: the redirect carried an error, or a ``state`` that is not this request's.
        ConsentTimeout: no redirect arrived in time.
        ClientAuthFailed / ProviderRejected / ProviderUnavailable / MalformedResponse: the code exchange failed.
    """
    chosen, existed = prepare(keeper.store, name, provider, replace)
    with LoopbackListener() as listener:
        request = authorization(chosen, listener.redirect_uri, scopes=scopes, authorize_params=authorize_params)
        show(request)
        found: list[Secret] = []
        listener.wait(lambda query: found.append(code_from_redirect(request, query)), timeout=timeout)
    tokens, sent_at = exchange_code(chosen, request, found[0], now=keeper.clock.now, http=http)
    return _keep(keeper, name, chosen, tokens, sent_at=sent_at, requested=request.scopes, existed=existed)


def authorization(
    provider: Provider, redirect_uri: str, *, scopes: tuple[str, ...] = (),
    authorize_params: Mapping[str, str] | None = None, state: str | None = None,
) -> AuthorizationRequest:  # fmt: skip
    """The authorization request (PKCE S256, a fresh ``state``) `connect` and grantkeeper serve's hosted connect
    send the browser with: `scopes` default to the provider's profile's; `authorize_params` go over the profile's
    and the provider's own, but may not set what grantkeeper sets itself. `state`: see `begin`."""
    default_scopes, extra = _profile_defaults(provider)
    reserved = sorted(RESERVED_AUTHORIZE_PARAMS.intersection(authorize_params or {}))
    if reserved:
        raise ConfigurationError(
            f"authorization parameter {reserved[0]!r} cannot be given: grantkeeper sets it itself (use --scope for "
            "scopes)"
        )
    extra.update(authorize_params or {})
    return begin(provider, redirect_uri, scopes=scopes or default_scopes, extra_params=extra, state=state)


def exchange_code(
    provider: Provider, request: AuthorizationRequest, code: Secret, *, now: Callable[[], float],
    http: httpx.Client | None = None,
) -> tuple[TokenSet, float]:  # fmt: skip
    """Trade the authorization `code` of `request` for the token set (which must hold a refresh token), and when
    its request was sent (by `now`): the one code exchange of `connect` and of the hosted connect. Blocking."""
    with _client(http) as client:
        sent_at = now()
        reply = _reply(send(client, exchange_request(provider, request, code), budget=_BUDGET), provider,
                       "code exchange")  # fmt: skip
    return _tokens_from_reply(provider, reply, now()), sent_at


def connect_device(
    keeper: Keeper,
    name: str,
    *,
    provider: str,
    scopes: tuple[str, ...] = (),
    replace: bool = False,
    show: Callable[[DeviceAuthorization], None],
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float | None = None,
) -> Connected:
    """Connect grant `name` of `provider` with the device authorization grant (RFC 8628) and store it.

    `show` is called once with the device authorization: the user opens its verification URI on any device and
    enters its user code. This call then polls the token endpoint every ``interval`` seconds (longer after
    ``slow_down``, backing off while the provider is unavailable) until the user approves or denies, or the
    device code expires; `timeout`, if given, ends the wait sooner. `sleep` waits between polls (tests pass
    their own); the device code's lifetime is measured with ``keeper.clock``. Scopes default to the provider's
    profile's. An existing grant `name` is replaced only with `replace`.

    Raises:
        ConfigurationError: the grant exists (without `replace`), or the provider has no device authorization URL.
        ConsentDenied: the user or the server's policy refused (``access_denied``).
        ConsentTimeout: the device code expired, or `timeout` passed, before the user approved.
        ClientAuthFailed / ProviderRejected / ProviderUnavailable / MalformedResponse: the provider refused or
            failed to start the flow, or answered a poll with something unusable.
    """
    chosen, existed = prepare(keeper.store, name, provider, replace)
    requested = scopes or _profile_defaults(chosen)[0]
    start = device.authorization_request(chosen, scopes=requested)  # no endpoint: refused before any request
    with _client(http) as client:
        started = keeper.clock.monotonic()  # the device code's lifetime runs from the request, not the answer
        reply = _reply(send(client, start, budget=_BUDGET), chosen, "device authorization request")
        authorization = device.authorization_from_reply(chosen, reply, scopes=requested, now=keeper.clock.now())
        show(authorization)
        lifetime = authorization.expires_in if timeout is None else min(timeout, authorization.expires_in)
        tokens, sent_at = _poll(keeper, chosen, authorization, client, sleep, deadline=started + lifetime)
    return _keep(keeper, name, chosen, tokens, sent_at=sent_at, requested=requested, existed=existed)


def _poll(
    keeper: Keeper, provider: Provider, authorization: DeviceAuthorization, client: httpx.Client,
    sleep: Callable[[float], None], *, deadline: float,
) -> tuple[TokenSet, float]:  # fmt: skip
    """Poll until the user decides; returns the token set and when the request that got it was sent."""
    wait, interval, failures = authorization.interval, authorization.interval, 0
    while True:
        sleep(wait)  # RFC 8628 §3.5: never sooner than the interval, the first poll included
        if keeper.clock.monotonic() >= deadline:
            why = " (the provider was unavailable for the last polls)" if failures else ""
            raise ConsentTimeout(
                f"provider {provider.name!r}: the device code was not approved in time{why}; nothing was stored. "
                "Start 'grantkeeper connect --device' again and enter the new code"
            )
        sent_at = keeper.clock.now()
        result = send(client, device.token_request(provider, authorization), budget=_BUDGET)
        step = device.poll_step(provider, result, interval=interval, failures=failures, now=keeper.clock.now())
        if isinstance(step, Done):
            return step.token_set, sent_at
        wait, interval, failures = step.seconds, step.interval, step.failures
        logger.debug("device flow at %s: %s; next poll in %.0f s", provider.name, step.reason, wait)


def prepare(store: Store, name: str, provider: str, replace: bool) -> tuple[Provider, bool]:
    """The provider, and whether grant `name` exists; checked before the consent, because a name refused after
    it would waste the new grant (and again by the hosted connect before it stores one). Blocking."""
    check_name(name, "grant")
    chosen = store.get_provider(provider)
    existed = _exists(store, name)
    if existed and not replace:
        raise ConfigurationError(
            f"grant {name!r} already exists; give --replace to replace it with the new consent (its current refresh "
            "token is then dropped), or choose another name",
            grant=name,
        )
    return chosen, existed


def _keep(
    keeper: Keeper, name: str, provider: Provider, tokens: TokenSet, *, sent_at: float, requested: tuple[str, ...],
    existed: bool,
) -> Connected:  # fmt: skip
    """Store the consent's whole token response (`consented`)."""
    grant = keeper._import(name, **consented(provider, tokens, sent_at=sent_at, requested=requested))
    logger.info("grant %s connected (provider %s, refresh token %s)", name, provider.name, grant.refresh_fp)
    return Connected(grant, existed)


def consented(provider: Provider, tokens: TokenSet, *, sent_at: float, requested: tuple[str, ...]) -> dict[str, Any]:
    """What a consent's token response stores (the arguments of the keepers' ``_import`` after the name): the
    refresh token, and the access token with its expiry counted from when its request was sent (as a refresh
    commit counts it). Every consent flow stores its grant through this."""
    assert tokens.refresh_token is not None  # every flow refuses a token set without one
    granted = tokens.scope if tokens.scope is not None else requested
    expires_in = tokens.expires_in if tokens.expires_in is not None else provider.default_expires_in
    rt_expires = tokens.refresh_token_expires_in
    return {
        "provider": provider.name, "refresh_token": tokens.refresh_token, "scopes": granted,
        "access_token": tokens.access_token, "expires_at": sent_at + expires_in,
        "refresh_expires_at": sent_at + rt_expires if rt_expires is not None else None,
    }  # fmt: skip


def revoke(keeper: Keeper, name: str, *, local_only: bool = False, http: httpx.Client | None = None) -> Grant:
    """Revoke grant `name`'s refresh token at its provider (RFC 7009), then delete the grant; returns the
    grant as it was. With `local_only`, only delete it.

    Raises:
        ConfigurationError: the provider has no revocation endpoint (nothing is deleted).
        ClientAuthFailed / ProviderRejected / ProviderUnavailable / MalformedResponse: the provider did not
            confirm the revocation (nothing is deleted).
    """
    return revoke_in(keeper.store, name, now=keeper.clock.now(), local_only=local_only, http=http)


def revoke_in(
    store: Store, name: str, *, now: float, local_only: bool = False, http: httpx.Client | None = None
) -> Grant:
    """`revoke` on a blocking store (the service's console runs it in a worker thread)."""
    store.replay_recovery(now=now)  # a successor kept locally is the token to revoke
    grant, provider = store.get_grant_and_provider(name)
    if not local_only:
        _revoke_at_provider(provider, grant, http)
    try:
        # Only the generation whose token was revoked: a refresh that committed meanwhile holds a live token.
        store.delete_grant(name, expected_generation=grant.generation)
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
    with _client(http) as client:
        reply = _reply(send(client, request, budget=_BUDGET), provider, "revocation request")
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
