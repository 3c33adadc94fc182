"""Provider quirks, each handled in one place: a response without expires_in (profile default, or the JWT exp),
expires_in as a string, refresh-token expiry fields, scope required on refresh, the same refresh token returned,
errors in HTTP 200 or 403. End-to-end through a keeper and the simulator where the store is involved."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from grantkeeper import Keeper, ProviderRejected, Secret
from grantkeeper.model import Provider
from grantkeeper.protocol.answers import HttpReply, OAuthFailure, Success, interpret
from grantkeeper.testing import FakeClock
from tests.helpers import FAST_POLICY, provider_for

Sim = Any
NOW = 1_800_000_000.0


def keeper_with(sim: Sim, store_url: str, clock: FakeClock | None = None, **provider_options: Any) -> Keeper:
    keeper = Keeper.open(store_url, policy=FAST_POLICY, clock=clock or FakeClock())
    keeper.add_provider(Provider(**{**_fields(provider_for(sim)), **provider_options}))
    keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant(), scopes=("read", "write"))
    return keeper


def _fields(provider: Provider) -> dict[str, Any]:
    return {name: getattr(provider, name) for name in provider.__dataclass_fields__}


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def reply(body: dict[str, Any], status: int = 200) -> HttpReply:
    return HttpReply(status, {"content-type": "application/json"}, json.dumps(body).encode())


class TestMissingExpiresIn:
    def test_profile_default_applies(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        """No expires_in and an opaque token: the provider's default access-token lifetime is used."""
        sim = make_sim(response_quirks=("no_expires_in",))
        with keeper_with(sim, store_url, default_expires_in=1234.0) as keeper:
            grant = keeper.refresh("g", force=True)
        assert grant.expires_at is not None and grant.updated_at is not None
        assert grant.expires_at - grant.updated_at == 1234.0

    def test_jwt_exp_applies(self, make_sim: Callable[..., Sim]) -> None:
        """No expires_in and a JWT access token: its exp claim sets the expiry, not the default."""
        sim = make_sim(response_quirks=("no_expires_in", "jwt_access_token"), access_ttl=600.0)
        keeper = Keeper.open("memory://", policy=FAST_POLICY)  # the JWT's exp is real time: a real clock
        with keeper:
            keeper.add_provider(_with(provider_for(sim), default_expires_in=86400.0))
            keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
            grant = keeper.refresh("g", force=True)
        assert grant.expires_at is not None and grant.updated_at is not None
        assert 0 < grant.expires_at - grant.updated_at <= 600.0

    def test_jwt_exp_parsing(self) -> None:
        token = jwt({"exp": NOW + 900, "sub": "u"})
        [result] = [interpret(reply({"access_token": token, "token_type": "Bearer"}), NOW)]
        assert isinstance(result, Success) and result.token_set.expires_in == 900.0

    @pytest.mark.parametrize(
        "token",
        ["opaque-token-value", jwt({"exp": "soon"}), jwt({"sub": "no exp"}), "a.b.c", jwt({"exp": True})],
    )
    def test_no_usable_exp_leaves_it_to_the_default(self, token: str) -> None:
        result = interpret(reply({"access_token": token, "token_type": "Bearer"}), NOW)
        assert isinstance(result, Success) and result.token_set.expires_in is None

    def test_expired_jwt_means_zero(self) -> None:
        result = interpret(reply({"access_token": jwt({"exp": NOW - 60}), "token_type": "Bearer"}), NOW)
        assert isinstance(result, Success) and result.token_set.expires_in == 0.0

    def test_stated_expires_in_wins_over_jwt(self) -> None:
        body = {"access_token": jwt({"exp": NOW + 900}), "token_type": "Bearer", "expires_in": 60}
        result = interpret(reply(body), NOW)
        assert isinstance(result, Success) and result.token_set.expires_in == 60.0


def _with(provider: Provider, **changes: Any) -> Provider:
    return Provider(**{**_fields(provider), **changes})


class TestResponseShapes:
    def test_expires_in_as_string(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim(response_quirks=("expires_in_string",), access_ttl=777.0)
        with keeper_with(sim, store_url) as keeper:
            grant = keeper.refresh("g", force=True)
        assert grant.expires_at is not None and grant.updated_at is not None
        assert grant.expires_at - grant.updated_at == 777.0

    @pytest.mark.parametrize("field", ["refresh_token_expires_in", "x_refresh_token_expires_in"])
    def test_refresh_token_expiry_is_recorded(self, make_sim: Callable[..., Sim], store_url: str,
                                              field: str) -> None:  # fmt: skip
        sim = make_sim(response_quirks=(field,), refresh_token_ttl=10 * 86400.0)
        clock = FakeClock()
        with keeper_with(sim, store_url, clock=clock) as keeper:
            clock.advance(60)
            grant = keeper.refresh("g", force=True)
            stored = keeper.store.get_grant("g")
        assert grant.refresh_expires_at == clock.now() + 10 * 86400.0
        assert stored.refresh_expires_at == grant.refresh_expires_at

    def test_same_refresh_token_returned(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        """A response echoing the refresh token keeps it: generation advances, the token and its issue time stay."""
        sim = make_sim(rotation="never", echo_refresh_token=True)
        clock = FakeClock()
        with keeper_with(sim, store_url, clock=clock) as keeper:
            before = keeper.store.get_grant("g")
            clock.advance(3600)
            after = keeper.refresh("g", force=True)
        assert after.generation == before.generation + 1
        assert after.refresh_fp == before.refresh_fp
        assert after.refresh_issued_at == before.refresh_issued_at == before.created_at
        assert after.refreshed_at == clock.now()


class TestScopeOnRefresh:
    def test_scope_sent_when_required(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim(response_quirks=("scope_required",))
        with keeper_with(sim, store_url, send_scope=True) as keeper:
            grant = keeper.refresh("g", force=True)
        assert grant.generation == 2 and grant.scopes == ("read", "write")

    def test_server_refuses_a_refresh_without_scope(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(response_quirks=("scope_required",))
        with keeper_with(sim, "memory://") as keeper, pytest.raises(ProviderRejected) as caught:
            keeper.refresh("g", force=True)
        assert caught.value.oauth_error == "invalid_request"


class TestErrorShapes:
    def test_error_in_http_200(self) -> None:
        """Slack-style {"ok": false, "error": ...} with HTTP 200 is an error, its alias resolved."""
        result = interpret(reply({"ok": False, "error": "invalid_refresh_token"}), NOW)
        assert isinstance(result, OAuthFailure) and result.error == "invalid_grant"

    def test_invalid_grant_with_403(self) -> None:
        """Auth0 / Atlassian answer a dead refresh token with 403: classified by the code, not the status."""
        body = {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}
        result = interpret(reply(body, status=403), NOW)
        assert isinstance(result, OAuthFailure) and (result.error, result.status) == ("invalid_grant", 403)

    def test_secret_never_in_a_jwt_derived_error(self) -> None:
        """A JWT access token is read for exp only; nothing of it reaches a reason or repr."""
        token = jwt({"exp": NOW + 60})
        result = interpret(reply({"access_token": token, "token_type": "Bearer"}), NOW)
        assert (
            isinstance(result, Success) and token not in repr(result) and result.token_set.access_token == Secret(token)
        )
