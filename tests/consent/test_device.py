"""``grantkeeper connect --device``: the device authorization grant (RFC 8628).

The sans-I/O steps (`grantkeeper.consent.device`) fed replies directly, one test per branch; the driver
(`connect_device`) against the provider simulator over real loopback HTTP, with an injected `sleep` whose
arguments are the polling intervals (nothing here waits on or asserts wall-clock time); the provider's
device authorization URL through the store, the CLI, discovery, bundles and schema migration 5; and the CLI
command, also in a pseudo-terminal for Ctrl-C. No output, error or log ever holds a token or a device code.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pexpect
import psycopg
import pytest
from click.testing import CliRunner

from grantkeeper import Keeper, Provider, Secret, UnknownGrant
from grantkeeper._exceptions import (
    ClientAuthFailed,
    ConfigurationError,
    ConsentDenied,
    ConsentTimeout,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
    StoreFormatError,
)
from grantkeeper.bundle import BundleKey, export_bundle, import_bundle
from grantkeeper.cli.main import cli
from grantkeeper.consent import connect_device
from grantkeeper.consent.device import (
    DEVICE_CODE_GRANT,
    MAX_BACKOFF,
    DeviceAuthorization,
    Done,
    Wait,
    authorization_from_reply,
    authorization_request,
    poll_step,
    token_request,
)
from grantkeeper.model import AuthMethod, TokenSet
from grantkeeper.protocol.answers import HttpReply
from grantkeeper.stores import open_store
from grantkeeper.stores.migrations import latest_version, migrations
from grantkeeper.testing.clock import FakeClock
from grantkeeper.testing.simulator import HttpError, Malformed, ProviderSimulator
from grantkeeper.tokens.transport import Ambiguous, NotSent
from tests.conftest import TEST_KEY
from tests.dot_server import REPO
from tests.helpers import MIGRATION_6_COLUMNS, drop_schedule_columns, provider_for

DEVICE_URL = "https://as.example/device_authorization"
FAKE = Provider(name="fake", token_url="https://as.example/token", client_id="cid", client_secret=Secret("s" * 32),
                device_authorization_url=DEVICE_URL)  # fmt: skip
DEVICE_CODE = "device-code-0123456789abcdefghijklmnop"
AUTHORIZATION = DeviceAuthorization(
    provider="fake", device_code=Secret(DEVICE_CODE), user_code="WDJB-MJHT",
    verification_uri="https://as.example/device", verification_uri_complete=None, expires_in=600, interval=5,
    scopes=("read",),
)  # fmt: skip
GOOD = {"device_code": DEVICE_CODE, "user_code": "WDJB-MJHT", "verification_uri": "https://as.example/device",
        "verification_uri_complete": "https://as.example/device?user_code=WDJB-MJHT", "expires_in": 1800,
        "interval": 7}  # fmt: skip


def reply(body: object, status: int = 200, **headers: str) -> HttpReply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpReply(status, {"content-type": "application/json", **headers}, raw)


def error(code: str, status: int = 400) -> HttpReply:
    return reply({"error": code, "error_description": f"about {code}"}, status)


TOKENS = {"access_token": "access-token-0123456789abcdefghij", "token_type": "Bearer", "expires_in": 3600,
          "refresh_token": "refresh-token-0123456789abcdefghij", "scope": "read"}  # fmt: skip


# ------------------------------------------------------------------------------------------------- sans I/O


class TestRequests:
    def test_authorization_request_authenticates_as_refreshes_do(self) -> None:
        """Basic client authentication, client_id and the scopes in the form, POSTed to the device endpoint."""
        request = authorization_request(FAKE, scopes=("read", "write"))
        assert request.method == "POST" and str(request.url) == DEVICE_URL
        assert parse_qs(request.content.decode()) == {"client_id": ["cid"], "scope": ["read write"]}
        user, _, secret = base64.b64decode(request.headers["Authorization"].split()[1]).decode().partition(":")
        assert (user, secret) == ("cid", "s" * 32)

    def test_authorization_request_with_client_secret_post_and_no_scopes(self) -> None:
        provider = dataclasses.replace(FAKE, auth_method=AuthMethod.CLIENT_SECRET_POST)
        request = authorization_request(provider)
        assert parse_qs(request.content.decode()) == {"client_id": ["cid"], "client_secret": ["s" * 32]}
        assert "Authorization" not in request.headers

    def test_no_device_endpoint_says_how_to_set_one(self) -> None:
        provider = dataclasses.replace(FAKE, device_authorization_url=None)
        with pytest.raises(ConfigurationError, match="--device-authorization-url URL") as caught:
            authorization_request(provider)
        assert "provider discover fake" in str(caught.value)

    def test_token_request_is_a_device_code_grant(self) -> None:
        request = token_request(FAKE, AUTHORIZATION)
        assert str(request.url) == FAKE.token_url and "Authorization" in request.headers
        assert parse_qs(request.content.decode()) == {"grant_type": [DEVICE_CODE_GRANT], "device_code": [DEVICE_CODE]}

    def test_device_endpoint_is_validated_like_the_others(self) -> None:
        with pytest.raises(ConfigurationError, match="device authorization URL must be an absolute"):
            dataclasses.replace(FAKE, device_authorization_url="ftp://as.example/device")
        with pytest.raises(ConfigurationError, match="uses plain http to"):
            dataclasses.replace(FAKE, device_authorization_url="http://as.example/device")


class TestAuthorizationReply:
    def test_full_reply(self) -> None:
        found = authorization_from_reply(FAKE, reply(GOOD), scopes=("read",), now=0)
        assert found == DeviceAuthorization(
            provider="fake", device_code=Secret(DEVICE_CODE), user_code="WDJB-MJHT",
            verification_uri="https://as.example/device",
            verification_uri_complete="https://as.example/device?user_code=WDJB-MJHT", expires_in=1800, interval=7,
            scopes=("read",),
        )  # fmt: skip
        assert DEVICE_CODE not in repr(found)

    def test_interval_defaults_to_five_seconds(self) -> None:
        """RFC 8628 §3.2: without ``interval`` clients use 5."""
        body = {k: v for k, v in GOOD.items() if k not in ("interval", "verification_uri_complete")}
        found = authorization_from_reply(FAKE, reply(body), scopes=(), now=0)
        assert (found.interval, found.verification_uri_complete) == (5.0, None)

    def test_tolerated_shapes(self) -> None:
        """Google's ``verification_url`` name, numeric strings, a sub-second interval raised to one second, and a
        huge lifetime clamped to a day."""
        body = {**GOOD, "verification_url": GOOD["verification_uri"], "expires_in": "10000000", "interval": "0.01"}
        del body["verification_uri"]
        found = authorization_from_reply(FAKE, reply(body), scopes=(), now=0)
        assert (found.verification_uri, found.expires_in, found.interval) == ("https://as.example/device", 86400, 1)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"device_code": None}, "no device_code"),
            ({"device_code": 5}, "no device_code"),
            ({"user_code": ""}, "no user_code"),
            ({"user_code": "X" * 65}, "no user_code"),
            ({"user_code": "AB\x1b[2JCD"}, "control characters"),
            ({"verification_uri": None}, "no verification_uri"),
            ({"verification_uri": "javascript:alert(1)"}, "no verification_uri"),
            ({"verification_uri": "http://as.example/device"}, "no verification_uri"),
            ({"verification_uri_complete": "file:///etc/passwd"}, "verification_uri_complete"),
            ({"expires_in": None}, "no positive expires_in"),
            ({"expires_in": 0}, "no positive expires_in"),
            ({"expires_in": True}, "no positive expires_in"),
            ({"interval": -1}, "interval"),
            ({"interval": "soon"}, "interval"),
        ],
    )
    def test_malformed(self, change: dict[str, object], message: str) -> None:
        body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
        with pytest.raises(MalformedResponse, match=message) as caught:
            authorization_from_reply(FAKE, reply(body), scopes=(), now=0)
        assert DEVICE_CODE not in str(caught.value)

    @pytest.mark.parametrize(
        ("answer", "raised", "message"),
        [
            (error("invalid_client", 401), ClientAuthFailed, "refused the client"),
            (error("unauthorized_client"), ClientAuthFailed, "may use the device grant"),
            (error("invalid_scope"), ProviderRejected, "invalid_scope"),
            (reply(b"", 503), ProviderUnavailable, "HTTP 503"),
            (reply(b"<html>oops</html>", 200), MalformedResponse, "not a JSON object"),
            (reply([1, 2]), MalformedResponse, "not a JSON object"),
            (reply(b"<html>not found</html>", 404), MalformedResponse, "HTTP 404"),
            (reply(TOKENS), MalformedResponse, "no device_code"),
        ],
    )
    def test_refusals(self, answer: HttpReply, raised: type[Exception], message: str) -> None:
        with pytest.raises(raised, match=message):
            authorization_from_reply(FAKE, answer, scopes=(), now=0)


class TestPollStep:
    def step(self, result: HttpReply | NotSent | Ambiguous, interval: float = 5, failures: int = 0) -> object:
        return poll_step(FAKE, result, interval=interval, failures=failures, now=0)

    def test_pending_waits_the_interval_and_clears_failures(self) -> None:
        assert self.step(error("authorization_pending"), failures=3) == Wait(5, 5, 0, "authorization_pending")

    def test_slow_down_adds_five_seconds_for_good(self) -> None:
        """RFC 8628 §3.5: the interval grows by 5 s for this and every later poll."""
        first = self.step(error("slow_down"))
        assert first == Wait(10, 10, 0, "slow_down")
        assert isinstance(first, Wait)
        assert self.step(error("slow_down"), interval=first.interval) == Wait(15, 15, 0, "slow_down")

    def test_unavailable_backs_off_exponentially_keeping_the_interval(self) -> None:
        steps = [self.step(reply(b"", 503), failures=n) for n in range(5)]
        assert [(s.seconds, s.interval, s.failures) for s in steps] == [  # type: ignore[attr-defined]
            (10, 5, 1), (20, 5, 2), (40, 5, 3), (MAX_BACKOFF, 5, 4), (MAX_BACKOFF, 5, 5)]  # fmt: skip

    @pytest.mark.parametrize(
        "answer",
        [reply(b"", 429), reply(b"", 500), error("temporarily_unavailable"), NotSent("refused"), Ambiguous("reset")],
    )
    def test_every_kind_of_unavailability_keeps_polling(self, answer: HttpReply | NotSent | Ambiguous) -> None:
        assert self.step(answer) == Wait(10, 5, 1, "unavailable")

    def test_retry_after_is_honoured(self) -> None:
        assert self.step(reply(b"", 429, **{"retry-after": "90"})) == Wait(90, 5, 1, "unavailable")

    def test_tokens_are_done(self) -> None:
        done = self.step(reply(TOKENS))
        assert isinstance(done, Done)
        assert isinstance(done.token_set, TokenSet)
        assert done.token_set.refresh_token == Secret(TOKENS["refresh_token"])

    def test_tokens_without_a_refresh_token_are_refused_like_the_code_flow(self) -> None:
        body = {k: v for k, v in TOKENS.items() if k != "refresh_token"}
        with pytest.raises(ProviderRejected, match="no refresh token; many providers issue one only"):
            self.step(reply(body))

    @pytest.mark.parametrize(
        ("code", "raised", "message"),
        [
            ("access_denied", ConsentDenied, "consent was refused"),
            ("expired_token", ConsentTimeout, "Start 'grantkeeper connect --device' again"),
            ("invalid_client", ClientAuthFailed, "refused the client credentials"),
            ("unauthorized_client", ClientAuthFailed, "refused the client credentials"),
            ("invalid_grant", ProviderRejected, "refused the device flow poll"),
        ],
    )
    def test_errors(self, code: str, raised: type[Exception], message: str) -> None:
        with pytest.raises(raised, match=message) as caught:
            self.step(error(code, 401 if code == "invalid_client" else 400))
        assert caught.value.oauth_error == code  # type: ignore[attr-defined]

    def test_malformed(self) -> None:
        with pytest.raises(MalformedResponse, match="device flow poll with body is not a JSON object"):
            self.step(reply(b"<html></html>"))


# --------------------------------------------------------------------------------- driver against the simulator


class Sleeper:
    """The injected `sleep`: records each wait, moves the fake clock, and acts as the user at chosen polls."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock
        self.at: dict[int, Callable[[], None]] = {}  # before poll number n (1-based), do this

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        action = self.at.pop(len(self.waits), None)
        if action is not None:
            action()


class Shown:
    """The `show` callback: keeps the device authorization, and may act at once (the user was quick)."""

    def __init__(self, act: Callable[[DeviceAuthorization], None] | None = None) -> None:
        self.authorization: DeviceAuthorization | None = None
        self.calls = 0
        self._act = act

    def __call__(self, authorization: DeviceAuthorization) -> None:
        self.calls += 1
        self.authorization = authorization
        if self._act is not None:
            self._act(authorization)

    @property
    def user_code(self) -> str:
        assert self.authorization is not None
        return self.authorization.user_code


@pytest.fixture
def sim(make_sim: Callable[..., ProviderSimulator]) -> ProviderSimulator:
    return make_sim()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def device_keeper(tmp_path: Path, sim: ProviderSimulator, clock: FakeClock) -> Iterator[Keeper]:
    """A keeper on the test's FakeClock whose provider "sim" has a device authorization endpoint."""
    with Keeper.open(f"sqlite://{tmp_path}/gk.db", clock=clock) as keeper:
        keeper.add_provider(
            dataclasses.replace(provider_for(sim), device_authorization_url=sim.device_authorization_url)
        )
        yield keeper


@pytest.fixture
def requests_sent() -> Iterator[tuple[httpx.Client, list[str]]]:
    """An HTTP client that records the path of every request it sends."""
    paths: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: paths.append(r.url.path)]}) as client:
        yield client, paths


def no_secret_in(sim: ProviderSimulator, *texts: str) -> None:
    for token in sim.issued_tokens():
        for text in texts:
            assert token not in text


class TestConnectDevice:
    def test_pending_then_approved(self, device_keeper: Keeper, sim: ProviderSimulator, clock: FakeClock,
                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
        """The user approves after the second poll: three polls at the server's interval, and the grant is stored
        with the access token of the last answer, which `access_token` returns without a refresh."""
        caplog.set_level(logging.DEBUG, logger="grantkeeper")
        sleep = Sleeper(clock)
        shown = Shown()
        sleep.at[3] = lambda: sim.approve(shown.user_code)
        done = connect_device(device_keeper, "g", provider="sim", scopes=("read",), show=shown, sleep=sleep)
        assert shown.calls == 1 and sleep.waits == [5, 5, 5]
        assert sim.stats.refresh_calls == 3 and sim.stats.errors == {"authorization_pending": 2}
        assert not done.replaced and done.grant.generation == 1 and done.grant.scopes == ("read",)
        stored = device_keeper.store.get_grant("g")
        assert stored.refresh_token is not None and sim.is_active(stored.refresh_token.reveal())
        assert stored.expires_at == clock.now() + 3600  # counted from when the successful poll was sent
        access = device_keeper.access_token("g")
        assert sim.stats.refresh_calls == 3  # no refresh: the device flow's own access token was kept
        assert access in sim.issued_tokens()
        no_secret_in(sim, caplog.text, repr(done), repr(shown.authorization))

    def test_one_token_request_when_approved_before_the_first_poll(self, device_keeper: Keeper,
                                                                   sim: ProviderSimulator) -> None:  # fmt: skip
        """The whole token response is kept: the provider sees one token request, and `token` serves its access
        token; only a forced refresh spends the refresh token."""
        connect_device(
            device_keeper, "g", provider="sim", show=Shown(lambda a: sim.approve(a.user_code)), sleep=Sleeper()
        )
        assert sim.stats.refresh_calls == 1 and sim.stats.successes == 1
        first = device_keeper.access_token("g")
        assert sim.stats.refresh_calls == 1
        assert device_keeper.refresh("g", force=True).generation == 2 and device_keeper.access_token("g") != first
        assert sim.stats.refresh_calls == 2 and sim.stats.rotations == 1

    def test_stated_refresh_token_lifetime_is_kept(self, make_sim: Callable[..., ProviderSimulator], tmp_path: Path,
                                                   clock: FakeClock) -> None:  # fmt: skip
        """refresh_token_expires_in in the token response becomes the grant's refresh-token expiry."""
        sim = make_sim(response_quirks=("refresh_token_expires_in",), refresh_token_ttl=86400)
        with Keeper.open(f"sqlite://{tmp_path}/gk.db", clock=clock) as keeper:
            keeper.add_provider(dataclasses.replace(provider_for(sim),
                                                    device_authorization_url=sim.device_authorization_url))  # fmt: skip
            done = connect_device(keeper, "g", provider="sim", show=Shown(lambda a: sim.approve(a.user_code)),
                                  sleep=Sleeper(clock))  # fmt: skip
        assert done.grant.refresh_expires_at == clock.now() + 86400

    def test_slow_down_increases_the_interval(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        """Each slow_down adds 5 s to every later wait (RFC 8628 §3.5), pending answers keep the new interval."""
        sim.inject(HttpError(400, error="slow_down"), times=2)
        sleep = Sleeper()
        shown = Shown()
        sleep.at[4] = lambda: sim.approve(shown.user_code)
        connect_device(device_keeper, "g", provider="sim", show=shown, sleep=sleep)
        assert sleep.waits == [5, 10, 15, 15]

    def test_unavailable_provider_is_polled_with_backoff(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        sim.inject(HttpError(503), times=2)
        sleep = Sleeper()
        shown = Shown()
        sleep.at[4] = lambda: sim.approve(shown.user_code)
        connect_device(device_keeper, "g", provider="sim", show=shown, sleep=sleep)
        assert sleep.waits == [5, 10, 20, 5]

    def test_access_denied(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        with pytest.raises(ConsentDenied, match="consent was refused") as caught:
            connect_device(
                device_keeper, "g", provider="sim", show=Shown(lambda a: sim.deny(a.user_code)), sleep=Sleeper()
            )
        assert caught.value.exit_code == 10
        with pytest.raises(UnknownGrant):
            device_keeper.store.get_grant("g")

    def test_expired_token_from_the_provider(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        sim.inject(HttpError(400, error="expired_token"))
        with pytest.raises(ConsentTimeout, match="expired before the user approved") as caught:
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=Sleeper())
        assert caught.value.oauth_error == "expired_token" and caught.value.exit_code == 6
        assert device_keeper.store.list_grants() == []

    def test_polling_stops_when_the_device_code_expires(self, make_sim: Callable[..., ProviderSimulator],
                                                        tmp_path: Path, clock: FakeClock) -> None:  # fmt: skip
        """The code's lifetime is measured with the keeper's clock: no poll is sent once it is over."""
        sim = make_sim(device_code_ttl=30, clock=clock.monotonic)
        with Keeper.open(f"sqlite://{tmp_path}/gk.db", clock=clock) as keeper:
            keeper.add_provider(dataclasses.replace(provider_for(sim),
                                                    device_authorization_url=sim.device_authorization_url))  # fmt: skip
            sleep = Sleeper(clock)
            with pytest.raises(ConsentTimeout, match="not approved in time"):
                connect_device(keeper, "g", provider="sim", show=Shown(), sleep=sleep)
        assert sleep.waits == [5] * 6 and sim.stats.refresh_calls == 5

    def test_timeout_ends_the_wait_sooner(
        self, device_keeper: Keeper, sim: ProviderSimulator, clock: FakeClock
    ) -> None:
        sleep = Sleeper(clock)
        with pytest.raises(ConsentTimeout, match="not approved in time"):
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=sleep, timeout=12)
        assert sleep.waits == [5, 5, 5] and sim.stats.refresh_calls == 2

    def test_timeout_says_the_provider_was_unavailable(self, device_keeper: Keeper, sim: ProviderSimulator,
                                                       clock: FakeClock) -> None:  # fmt: skip
        sim.inject(HttpError(503), times=100)
        with pytest.raises(ConsentTimeout, match="the provider was unavailable"):
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=Sleeper(clock), timeout=60)

    def test_no_refresh_token(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        approve = Shown(lambda a: sim.approve(a.user_code, refresh_token=False))
        with pytest.raises(ProviderRejected, match="no refresh token") as caught:
            connect_device(device_keeper, "g", provider="sim", show=approve, sleep=Sleeper())
        assert device_keeper.store.list_grants() == []
        no_secret_in(sim, str(caught.value))

    def test_malformed_poll_answer(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        sim.inject(Malformed("html"))
        with pytest.raises(MalformedResponse, match="answered a device flow poll with body is not a JSON object"):
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=Sleeper())
        assert device_keeper.store.list_grants() == []

    def test_client_auth_failure_at_the_device_endpoint(
        self, device_keeper: Keeper, sim: ProviderSimulator, requests_sent: tuple[httpx.Client, list[str]]
    ) -> None:
        """Wrong credentials are refused at the start, before anything is shown or polled."""
        device_keeper.add_provider(
            dataclasses.replace(device_keeper.store.get_provider("sim"), client_secret=Secret("w" * 24))
        )
        client, paths = requests_sent
        shown = Shown()
        with pytest.raises(ClientAuthFailed, match="refused the client") as caught:
            connect_device(device_keeper, "g", provider="sim", show=shown, sleep=Sleeper(), http=client)
        assert caught.value.exit_code == 4 and shown.calls == 0 and paths == ["/device_authorization"]
        assert "w" * 24 not in str(caught.value)
        assert not client.is_closed  # the caller's client stays the caller's to close

    def test_client_auth_failure_while_polling(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        sim.inject(HttpError(401, error="invalid_client"))
        with pytest.raises(ClientAuthFailed, match="while polling"):
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=Sleeper())

    def test_existing_name_is_refused_before_any_request(
        self, device_keeper: Keeper, sim: ProviderSimulator, requests_sent: tuple[httpx.Client, list[str]]
    ) -> None:
        device_keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
        client, paths = requests_sent
        with pytest.raises(ConfigurationError, match="already exists; give --replace"):
            connect_device(device_keeper, "g", provider="sim", show=Shown(), sleep=Sleeper(), http=client)
        assert paths == []

    @pytest.mark.parametrize("name", ["", "has space", "x" * 201])
    def test_bad_name_is_refused_before_any_request(self, device_keeper: Keeper, name: str,
                                                    requests_sent: tuple[httpx.Client, list[str]]) -> None:  # fmt: skip
        client, paths = requests_sent
        with pytest.raises(ConfigurationError, match="grant name"):
            connect_device(device_keeper, name, provider="sim", show=Shown(), sleep=Sleeper(), http=client)
        assert paths == []

    def test_provider_without_device_endpoint(self, device_keeper: Keeper, sim: ProviderSimulator,
                                              requests_sent: tuple[httpx.Client, list[str]]) -> None:  # fmt: skip
        device_keeper.add_provider(provider_for(sim, name="plain"))
        client, paths = requests_sent
        with pytest.raises(ConfigurationError, match="provider add plain --device-authorization-url URL"):
            connect_device(device_keeper, "g", provider="plain", show=Shown(), sleep=Sleeper(), http=client)
        assert paths == []

    def test_replace(self, device_keeper: Keeper, sim: ProviderSimulator) -> None:
        """With replace, the new consent replaces the grant as a re-import does: the next generation."""
        old = sim.issue_grant()
        device_keeper.import_grant("g", provider="sim", refresh_token=old)
        approve = Shown(lambda a: sim.approve(a.user_code))
        done = connect_device(device_keeper, "g", provider="sim", replace=True, show=approve, sleep=Sleeper())
        assert done.replaced and done.grant.generation == 2
        assert device_keeper.store.get_grant("g").refresh_token != Secret(old)


# ------------------------------------------------------------------------------ the store keeps the access token


def test_import_grant_stores_the_access_token_sealed(store_url: str, sim: ProviderSimulator, tmp_path: Path) -> None:
    """Sealed and fingerprinted as a refresh commit writes it; a re-import without one drops the old one."""
    with Keeper.open(store_url) as keeper:
        keeper.add_provider(provider_for(sim))
        now = keeper.clock.now()
        access = Secret("access-token-from-the-consent-0001")
        grant = keeper.store.import_grant("g", provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(),
                                          now=now, access_token=access, expires_at=now + 600)  # fmt: skip
        assert grant.access_token == access and grant.expires_at == now + 600 and grant.access_verified
        assert grant.access_fp == keeper.store.fingerprint(access)
        assert keeper.access_token("g") == access.reveal() and sim.stats.refresh_calls == 0
        again = keeper.store.import_grant("g", provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(),
                                          now=now)  # fmt: skip
        assert (again.access_token, again.access_fp, again.expires_at) == (None, None, None)
        with pytest.raises(ConfigurationError, match="needs its expiry"):
            keeper.store.import_grant("g", provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(),
                                      now=now, access_token=access)  # fmt: skip
    if store_url.startswith("sqlite"):
        assert b"access-token-from-the-consent" not in (tmp_path / "grants.db").read_bytes()


# ------------------------------------------------------------------- the provider field, its CLI and its schema


def test_provider_add_discover_and_list(tmp_path: Path, sim: ProviderSimulator) -> None:
    url = f"sqlite://{tmp_path}/gk.db"
    runner = CliRunner()
    added = runner.invoke(cli, ["--store", url, "provider", "add", "a", "--token-url", sim.url, "--client-id", "c",
                                "--client-secret-env", "X", "--device-authorization-url", DEVICE_URL])  # fmt: skip
    assert added.exit_code == 0, added.output
    bad = runner.invoke(
        cli,
        [
            "--store",
            url,
            "provider",
            "add",
            "b",
            "--token-url",
            sim.url,
            "--client-id",
            "c",
            "--client-secret-env",
            "X",
            "--device-authorization-url",
            "http://as.example/d",
        ],
    )
    assert bad.exit_code == 3 and "uses plain http to" in bad.output
    found = runner.invoke(cli, ["--store", url, "provider", "discover", "d", "--issuer", sim.base_url,
                                "--client-id", sim.client_id, "--client-secret-env", "X"])  # fmt: skip
    assert found.exit_code == 0, found.output
    listed = json.loads(runner.invoke(cli, ["--store", url, "provider", "list", "--json"]).stdout)
    assert {p["name"]: p["device_authorization_url"] for p in listed} == {
        "a": DEVICE_URL, "d": sim.device_authorization_url}  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "params", "expected"),
    [
        ("google", (), "https://oauth2.googleapis.com/device/code"),
        ("microsoft_entra", ("--param", "tenant=contoso.example"),
         "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/devicecode"),
        ("xero", (), None),
    ],
)  # fmt: skip
def test_profiles_state_the_device_endpoint(tmp_path: Path, profile: str, params: tuple[str, ...],
                                            expected: str | None) -> None:  # fmt: skip
    """Profiles whose provider documents the endpoint give it (with placeholders filled); others leave it unset."""
    url = f"sqlite://{tmp_path}/gk.db"
    out = CliRunner().invoke(cli, ["--store", url, "provider", "add", "p", "--profile", profile, "--client-id", "c",
                                   "--client-secret-env", "X", *params])  # fmt: skip
    assert out.exit_code == 0, out.output
    with Keeper.open(url) as keeper:
        assert keeper.store.get_provider("p").device_authorization_url == expected


def test_bundle_carries_the_device_endpoint(tmp_path: Path, sim: ProviderSimulator) -> None:
    key = BundleKey.passphrase(Secret("a passphrase long enough"))
    with Keeper.open(f"sqlite://{tmp_path}/a.db") as source:
        source.add_provider(dataclasses.replace(provider_for(sim), device_authorization_url=DEVICE_URL))
        source.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
        data = export_bundle(source.store, key, now=source.clock.now(), scrypt_n=2**14)
    with Keeper.open(f"sqlite://{tmp_path}/b.db") as target:
        import_bundle(target.store, data, key, now=target.clock.now())
        assert target.store.get_provider("sim").device_authorization_url == DEVICE_URL


def test_sqlite_version_4_store_migrates_to_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written with migrations 1-4 is refused until `migrate`, then keeps its providers and stores the
    new endpoint."""
    from grantkeeper.stores import sqlite as sqlite_module

    url = f"sqlite://{tmp_path}/v4.db"
    with monkeypatch.context() as patch:
        first = migrations("sqlite")[:4]
        patch.setattr(sqlite_module, "migrations", lambda _backend: first)
        patch.setattr(sqlite_module, "latest_version", lambda _backend: 4)
        open_store(url).close()
    raw = sqlite3.connect(tmp_path / "v4.db")
    assert "device_authorization_url" not in {r[1] for r in raw.execute("PRAGMA table_info(providers)")}
    raw.execute(
        "INSERT INTO providers (name, token_url, client_id, client_secret_env, auth_method, rotation, reuse_grace, "
        "skew, default_expires_in, authorization_url, created_at, updated_at) VALUES ('old', ?, 'cid', 'X', "
        "'client_secret_basic', 'always', 0, 30, 3600, 'https://as.example/authorize', 1, 1)",
        (FAKE.token_url,),
    )
    raw.commit()
    raw.close()
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(url)
    store = open_store(url, migrate=True)
    try:
        assert store.schema_version() == latest_version("sqlite") >= 5
        old = store.get_provider("old")
        assert (old.authorization_url, old.device_authorization_url) == ("https://as.example/authorize", None)
        store.put_provider(FAKE, now=2.0)
        assert store.get_provider("fake") == FAKE
    finally:
        store.close()


def test_postgres_version_4_store_migrates_to_5(pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    store = open_store(pg_url, migrate=True)
    store.put_provider(dataclasses.replace(FAKE, device_authorization_url=None), now=1.0)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        for column in (*MIGRATION_6_COLUMNS, "device_authorization_url"):
            raw.execute(f"ALTER TABLE providers DROP COLUMN {column}")
        raw.execute("ALTER TABLE leases DROP COLUMN liveness")  # migration 8, applied again too
        drop_schedule_columns(raw.execute)  # and 9
        raw.execute("UPDATE meta SET value = '4'::bytea WHERE key = 'schema_version'")
    with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
        open_store(pg_url)
    store = open_store(pg_url, migrate=True)
    try:
        assert store.schema_version() == latest_version("postgres") >= 5
        assert store.get_provider("fake").device_authorization_url is None
        store.put_provider(FAKE, now=2.0)
        assert store.get_provider("fake") == FAKE
    finally:
        store.close()


# ----------------------------------------------------------------------------------------------------- CLI


def _cli_store(tmp_path: Path, sim: ProviderSimulator, *, device: bool = True) -> str:
    url = f"sqlite://{tmp_path}/cli.db"
    with Keeper.open(url) as keeper:
        provider = provider_for(sim)
        keeper.add_provider(dataclasses.replace(provider, device_authorization_url=sim.device_authorization_url)
                            if device else provider)  # fmt: skip
    return url


def test_cli_opens_the_browser_at_the_complete_uri(tmp_path: Path, make_sim: Callable[..., ProviderSimulator],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The 'browser' is opened at verification_uri_complete and approves the code it carries; the CLI prints the
    code, both URLs and the polling line to stderr, the result line to stdout, and no token."""
    sim = make_sim(device_interval=1)
    url = _cli_store(tmp_path, sim)
    opened: list[str] = []

    def browser(target: str) -> bool:
        opened.append(target)
        sim.approve(parse_qs(urlsplit(target).query)["user_code"][0])
        return True

    monkeypatch.setattr("webbrowser.open", browser)
    monkeypatch.setenv("DISPLAY", ":0")  # a graphical session: without one no browser is opened
    out = CliRunner().invoke(cli, ["--store", url, "connect", "g", "--provider", "sim", "--device", "--scope",
                                   "read"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("grant g connected: provider sim, scopes read, refresh token ")
    assert opened == [f"{sim.base_url}/device?user_code={parse_qs(urlsplit(opened[0]).query)['user_code'][0]}"]
    assert f"    {sim.base_url}/device\n" in out.stderr and "    code: " in out.stderr
    assert "Or open this URL, which carries the code" in out.stderr and "Opened the browser" in out.stderr
    assert "Waiting up to 600s for the approval (polling every 1s" in out.stderr
    no_secret_in(sim, out.output)


def test_cli_timeout_is_bounded_by_the_code_lifetime(tmp_path: Path, make_sim: Callable[..., ProviderSimulator],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    sim = make_sim(device_interval=1, device_code_ttl=120)
    url = _cli_store(tmp_path, sim)
    monkeypatch.setattr("webbrowser.open", lambda target: sim.deny(parse_qs(urlsplit(target).query)["user_code"][0]))
    monkeypatch.setenv("DISPLAY", ":0")
    out = CliRunner().invoke(cli, ["--store", url, "connect", "g", "--provider", "sim", "--device", "--timeout",
                                   "900"])  # fmt: skip
    assert "Waiting up to 120s" in out.stderr
    assert out.exit_code == 10 and "error[consent_denied]" in out.stderr


def test_cli_without_device_endpoint(tmp_path: Path, sim: ProviderSimulator) -> None:
    url = _cli_store(tmp_path, sim, device=False)
    out = CliRunner().invoke(cli, ["--store", url, "connect", "g", "--provider", "sim", "--device", "--no-browser"])
    assert out.exit_code == 3 and "--device-authorization-url URL" in out.stderr and "code:" not in out.stderr


def test_cli_help_mentions_the_device_flow() -> None:
    out = CliRunner().invoke(cli, ["connect", "--help"])
    text = " ".join(out.stdout.split())
    assert out.exit_code == 0 and "--device" in text and "enter the code" in text


def test_ctrl_c_while_polling_exits_130_and_stores_nothing(
    tmp_path: Path, make_sim: Callable[..., ProviderSimulator]
) -> None:
    """In a terminal: the code is shown, the user presses Ctrl-C while grantkeeper polls; exit status 130."""
    sim = make_sim(device_interval=1)
    url = _cli_store(tmp_path, sim)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    child = pexpect.spawn(sys.executable, ["-m", "grantkeeper", "--store", url, "connect", "g", "--provider", "sim",
                                           "--device", "--no-browser"], cwd=str(REPO), env=env, encoding="utf-8",
                          timeout=60)  # fmt: skip
    try:
        child.expect(r"code: ([B-Z]{4}-[B-Z]{4})")
        child.expect("Waiting up to")
        for _ in range(600):  # until it has polled once (bounded: a minute), reading its output meanwhile
            if sim.stats.refresh_calls:
                break
            child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.1)
        assert child.isalive() and sim.stats.refresh_calls >= 1
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 130 and "interrupted" in (child.before or "")
    with Keeper.open(url) as keeper:
        assert keeper.store.list_grants() == []
