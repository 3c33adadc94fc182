"""``grantkeeper connect``: authorization code + PKCE through a loopback redirect (RFC 8252), end to end against
django-oauth-toolkit (DOT) with the scripted browser, and the refusals: a wrong ``state``, ``access_denied``,
an existing grant without ``--replace``, no redirect in time. No output ever holds a token or a secret."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import Keeper, Provider, Secret, UnknownGrant
from grantkeeper._exceptions import ConfigurationError, ConsentDenied, ConsentFailed, ConsentTimeout
from grantkeeper.consent import connect
from grantkeeper.consent.flow import AuthorizationRequest, begin, code_from_redirect
from tests.dot_browser import consent
from tests.dot_server import REPO, DotFactory, DotServer

FAKE = Provider(name="fake", token_url="https://as.example/token", client_id="cid", client_secret=Secret("s" * 32),
                authorization_url="https://as.example/authorize?tenant=t1")  # fmt: skip


def dot_keeper(url: str, server: DotServer) -> None:
    with Keeper.open(url) as keeper:
        keeper.add_provider(server.provider(authorization_url=server.authorize_url))


class Browser:
    """The person at the browser, acting in a thread once `connect` has shown the URL (the listener only
    answers once `connect` waits, so the browser must not run inside `show`)."""

    def __init__(self, act: Callable[[AuthorizationRequest], httpx.Response]) -> None:
        self._act = act
        self.response: httpx.Response | None = None
        self.request: AuthorizationRequest | None = None
        self._thread: threading.Thread | None = None

    def show(self, request: AuthorizationRequest) -> None:
        self.request = request

        def run() -> None:
            self.response = self._act(request)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> httpx.Response:
        assert self._thread is not None
        self._thread.join(60)
        assert self.response is not None
        return self.response


def through_dot(server: DotServer, *, allow: bool = True) -> Callable[[AuthorizationRequest], httpx.Response]:
    def act(request: AuthorizationRequest) -> httpx.Response:
        with httpx.Client(timeout=30, follow_redirects=False) as browser:
            callback = consent(browser, server, request.url, allow=allow)
            assert callback.startswith(request.redirect_uri + "?")
            return browser.get(callback)

    return act


def to_listener(**query: str) -> Callable[[AuthorizationRequest], httpx.Response]:
    def act(request: AuthorizationRequest) -> httpx.Response:
        httpx.get(request.redirect_uri.replace("/callback", "/favicon.ico"), timeout=30)  # ignored: 404
        return httpx.get(f"{request.redirect_uri}?{urlencode(query)}", timeout=30)

    return act


# ------------------------------------------------------------------------------------------ end to end (CLI)


def test_connect_no_browser_end_to_end(tmp_path: Path, dot_server: DotFactory) -> None:
    """A provider discovered from DOT's metadata; `connect --no-browser` prints the URL; the person logs in and
    consents at DOT; DOT redirects to the listener; the code is exchanged with the verifier and the grant
    stored. It then refreshes at DOT, and no output held a token or the client secret."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    discovered = subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", url, "provider", "discover", "dot", "--issuer",
         server.url("/o"), "--client-id", server.accounts.client_id, "--client-secret-stdin", "--rotation", "always"],
        cwd=REPO, input=server.accounts.client_secret + "\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert discovered.returncode == 0, discovered.stderr
    with Keeper.open(url) as keeper:  # the endpoints come from DOT's RFC 8414 metadata
        provider = keeper.store.get_provider("dot")
    assert (provider.authorization_url, provider.revocation_url) == (server.authorize_url, server.revoke_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "--store", url, "connect", "g", "--provider", "dot", "--scope", "read",
         "--scope", "write", "--no-browser", "--timeout", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    printed: list[str] = []
    while not any(line.startswith("    http") for line in printed):
        line = process.stderr.readline()
        assert line, f"connect ended before printing the URL: {''.join(printed)}"
        printed.append(line)
    authorization_url = next(line.strip() for line in printed if line.startswith("    http"))
    query = parse_qs(urlsplit(authorization_url).query)
    assert query["code_challenge_method"] == ["S256"] and query["response_type"] == ["code"]
    redirect_uri = query["redirect_uri"][0]
    assert redirect_uri.startswith("http://127.0.0.1:") and redirect_uri.endswith("/callback")
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        callback = consent(browser, server, authorization_url)
        assert callback.startswith(redirect_uri + "?")
        landing = browser.get(callback)
    assert landing.status_code == 200 and "close this tab" in landing.text
    stdout, rest = process.communicate(timeout=120)
    stderr = "".join(printed) + rest
    assert process.returncode == 0, stderr
    assert stdout.startswith("grant g connected: provider dot, scopes read write, refresh token ")

    with Keeper.open(url) as keeper:
        grant = keeper.store.get_grant("g")
        assert grant.generation == 1 and grant.scopes == ("read", "write")
        assert grant.refresh_token is not None
        first_refresh = grant.refresh_token.reveal()
        mark = server.log_mark()
        exchanged = keeper.access_token("g")  # the code exchange's access token was kept: no refresh needed
        assert keeper.store.get_grant("g").generation == 1 and server.token_calls(mark) == []
        assert server.resource_status(exchanged) == (200, None)
        access = keeper.refresh("g", force=True).access_token
        assert access is not None
        access = access.reveal()
        assert keeper.store.get_grant("g").generation == 2
    assert server.resource_status(access) == (200, None)
    assert [c["status"] for c in server.token_calls(mark, grant_type="refresh_token")] == [200]
    code_calls = server.token_calls(grant_type="authorization_code")
    assert code_calls and code_calls[-1]["status"] == 200
    code = parse_qs(urlsplit(callback).query)["code"][0]
    printed_all = stdout + stderr + discovered.stdout + discovered.stderr
    for secret in (first_refresh, exchanged, access, server.accounts.client_secret, code):
        assert secret not in printed_all


def test_connect_refuses_an_existing_grant_without_replace(tmp_path: Path, dot_server: DotFactory) -> None:
    """Without --replace an existing name is refused before any browser is involved; with it, a new consent
    replaces the grant as a re-import does (the next generation, the new refresh token)."""
    from grantkeeper.cli.main import cli

    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    dot_keeper(url, server)
    with Keeper.open(url) as keeper:
        keeper.import_grant("g", provider="dot", refresh_token="an-old-refresh-token-that-is-long")
    out = CliRunner().invoke(cli, ["--store", url, "connect", "g", "--provider", "dot", "--no-browser"])
    assert out.exit_code == 3 and "already exists; give --replace" in out.output
    assert "http" not in out.output  # refused before a URL was made

    with Keeper.open(url) as keeper:
        browser = Browser(through_dot(server))
        done = connect(keeper, "g", provider="dot", scopes=("read",), replace=True, timeout=120, show=browser.show)
        assert browser.join().status_code == 200
        assert done.replaced and done.grant.generation == 2 and done.grant.scopes == ("read",)
        token = keeper.store.get_grant("g").refresh_token
        assert token is not None and token.reveal() != "an-old-refresh-token-that-is-long"
        assert keeper.refresh("g", force=True).generation == 3


def test_access_denied_at_dot_is_a_typed_error(tmp_path: Path, dot_server: DotFactory) -> None:
    """Pressing Cancel at DOT's consent page redirects with error=access_denied: ConsentDenied, nothing
    stored, and the browser is told."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    dot_keeper(url, server)
    mark = server.log_mark()
    with Keeper.open(url) as keeper:
        browser = Browser(through_dot(server, allow=False))
        with pytest.raises(ConsentDenied, match="consent was refused") as caught:
            connect(keeper, "g", provider="dot", timeout=120, show=browser.show)
        assert caught.value.oauth_error == "access_denied" and caught.value.exit_code == 10
        landing = browser.join()
        assert landing.status_code == 400 and "Authorization failed" in landing.text
        with pytest.raises(UnknownGrant):
            keeper.store.get_grant("g")
    assert server.token_calls(mark) == []


def test_access_denied_through_the_cli(tmp_path: Path) -> None:
    """The CLI prints the mapped error with its code and exits 10."""
    url = f"sqlite://{tmp_path}/gk.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(FAKE)
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "--store", url, "connect", "g", "--provider", "fake", "--no-browser"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    line = ""
    while not line.startswith("    https://as.example/authorize?tenant=t1&"):
        line = process.stderr.readline()
        assert line, "connect ended before printing the URL"
    query = parse_qs(urlsplit(line.strip()).query)
    redirect = f"{query['redirect_uri'][0]}?{urlencode({'error': 'access_denied', 'state': query['state'][0]})}"
    assert httpx.get(redirect, timeout=30).status_code == 400
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 10 and stdout == ""
    assert "error[consent_denied]: provider 'fake': consent was refused" in stderr


# ------------------------------------------------------------------------------------ refusals (no server)


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def keeper(keeper: Keeper) -> Keeper:
    """The shared keeper (on SQLite here) with provider FAKE, whose token endpoint nothing serves."""
    keeper.add_provider(FAKE)
    return keeper


def test_state_mismatch_is_refused_before_any_exchange(keeper: Keeper) -> None:
    """A redirect with another state (even one carrying a code) is refused; the code is never exchanged
    (the fake token endpoint would fail differently), nothing is stored, and the browser is told."""
    browser = Browser(to_listener(code="stolen-code", state="not-the-state"))
    with pytest.raises(ConsentFailed, match="state does not match") as caught:
        connect(keeper, "g", provider="fake", timeout=60, show=browser.show)
    assert "stolen-code" not in caught.value.message
    assert browser.join().status_code == 400
    with pytest.raises(UnknownGrant):
        keeper.store.get_grant("g")


def test_missing_state_is_refused(keeper: Keeper) -> None:
    browser = Browser(to_listener(error="access_denied"))
    with pytest.raises(ConsentFailed, match="state does not match"):
        connect(keeper, "g", provider="fake", timeout=60, show=browser.show)


def test_no_redirect_in_time(keeper: Keeper) -> None:
    with pytest.raises(ConsentTimeout, match=r"no redirect reached http://127\.0\.0\.1:"):
        connect(keeper, "g", provider="fake", timeout=1, show=lambda _: None)


def test_provider_without_authorization_url(keeper: Keeper) -> None:
    keeper.add_provider(Provider(name="bare", token_url="https://as.example/token", client_id="c",
                                 client_secret=Secret("s")))  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"no authorization endpoint.*--authorization-url"):
        connect(keeper, "g", provider="bare", show=lambda _: None)


def test_authorization_request_is_pkce_s256() -> None:
    """The challenge is S256 of the verifier, the state fresh each time, the provider's own query kept, and
    profile parameters cannot override the protocol's."""
    first = begin(FAKE, "http://127.0.0.1:5/callback", scopes=("a", "b"),
                  extra_params={"access_type": "offline", "state": "attacker"})  # fmt: skip
    second = begin(FAKE, "http://127.0.0.1:5/callback")
    query = parse_qs(urlsplit(first.url).query)
    digest = hashlib.sha256(first.verifier.reveal().encode()).digest()
    assert query["code_challenge"] == [base64.urlsafe_b64encode(digest).rstrip(b"=").decode()]
    assert query["state"] == [first.state] and first.state != second.state
    assert (query["tenant"], query["access_type"], query["scope"]) == (["t1"], ["offline"], ["a b"])
    assert first.verifier.reveal() not in first.url and 43 <= len(first.verifier.reveal()) <= 128
    assert "scope" not in parse_qs(urlsplit(second.url).query)


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [
        ({"error": ["invalid_scope"]}, ConsentFailed, "a requested scope is unknown"),
        ({"error": ["weird_error"], "error_description": ["x" * 40]}, ConsentFailed, r"refused the request.*redacted"),
        ({"code": ["a", "b"]}, ConsentFailed, "more than once"),
        ({}, ConsentFailed, "neither a code nor an error"),
    ],
)
def test_redirect_errors(query: dict[str, list[str]], error: type[Exception], message: str) -> None:
    request = begin(FAKE, "http://127.0.0.1:5/callback")
    with pytest.raises(error, match=message):
        code_from_redirect(request, {**query, "state": [request.state]})
