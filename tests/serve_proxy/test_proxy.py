"""`proxy_request` over real HTTP: caller -> uvicorn app mounting the proxy -> uvicorn upstream, all on loopback.

Every response the caller gets goes through `Caller`, which fails the test if any token the grant ever had
appears in its status line, headers or body.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from grantkeeper import AsyncKeeper, Keeper
from grantkeeper.serve.proxy import OUTCOME_HEADER, ProxyLimits, ProxyPathRefused, upstream_url
from grantkeeper.testing.clock import FakeClock
from tests.helpers import FAST_POLICY
from tests.integration_support import EXPIRE_ALL, keeper_with_grant, refresh_calls
from tests.serve_proxy.servers import (
    ProxySettings,
    Served,
    Tokens,
    Upstream,
    pattern,
    pattern_sha256,
    proxy_app,
)

MiB = 1024 * 1024


class Caller:
    """The proxy's caller; checks every answer for tokens."""

    def __init__(self, proxy: Served, tokens: Tokens) -> None:
        self.base = proxy.url + "/v1/proxy/g/"
        self.port = proxy.port
        self.tokens = tokens
        self.http = httpx.Client(trust_env=False, timeout=30)

    def scan(self, *parts: bytes) -> None:
        blob = b"\n".join(parts)
        for token in self.tokens.issued:
            assert token.encode() not in blob, "a token reached the caller"

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = self.http.request(method, self.base + path, **kwargs)  # type: ignore[arg-type]
        self.scan(str(response.status_code).encode(), response.headers.raw.__repr__().encode(), response.content)
        return response

    def raw(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """A request whose path is sent exactly as written (httpx would normalise ``..`` away)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest("GET", "/v1/proxy/g/" + path, skip_accept_encoding=True)
            conn.endheaders()
            answer = conn.getresponse()
            body = answer.read()
            headers = dict(answer.getheaders())
        finally:
            conn.close()
        self.scan(repr(headers).encode(), body)
        return answer.status, headers, body


@pytest.fixture
def other() -> Iterator[tuple[Upstream, Served]]:
    api = Upstream()
    served = Served(api.app())
    yield api, served
    served.stop()


@pytest.fixture
def tokens(upstream: tuple[Upstream, Served]) -> Tokens:
    return Tokens(upstream[0])


@pytest.fixture
def settings(upstream: tuple[Upstream, Served]) -> ProxySettings:
    return ProxySettings(base_url=upstream[1].url + "/api")


@pytest.fixture
def caller(settings: ProxySettings, tokens: Tokens) -> Iterator[Caller]:
    proxy = Served(proxy_app(settings, tokens.get, tokens.report))
    caller = Caller(proxy, tokens)
    yield caller
    caller.http.close()
    proxy.stop()


def seen(upstream: tuple[Upstream, Served]) -> list[str]:
    return [s.raw_path for s in upstream[0].seen]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["title"] == code
    return body


# --- the token -----------------------------------------------------------------------------------------------


def test_token_injected_and_caller_authorization_dropped(caller: Caller, tokens: Tokens, upstream: tuple) -> None:
    """The upstream gets the grant's token and none of the caller's credentials or hop-by-hop headers; the
    query string passes unchanged; Host is the upstream's."""
    headers = {"Authorization": "Bearer caller-own-credential", "Proxy-Authorization": "Basic eA==",
               "Cookie": "serve-session=1", "Connection": "X-Caller-Hop", "X-Caller-Hop": "1",
               "Keep-Alive": "timeout=3", "X-Grantkeeper-Key": "api-key", "X-Custom": "kept"}  # fmt: skip
    response = caller.request("GET", "things?a=1&b=%20x&a=2", headers=headers)
    assert response.status_code == 200
    [got] = upstream[0].seen
    assert got.header("authorization") == f"Bearer {tokens.current}"
    assert [k for k, _ in got.headers].count("authorization") == 1
    for name in ("proxy-authorization", "cookie", "x-caller-hop", "keep-alive", "x-grantkeeper-key"):
        assert not got.has(name), name
    assert got.header("x-custom") == "kept"
    assert got.header("host") == f"127.0.0.1:{upstream[1].port}"
    assert got.raw_path == "/api/things" and got.query == "a=1&b=%20x&a=2"
    assert OUTCOME_HEADER not in response.headers


def test_upstream_response_headers_filtered(caller: Caller) -> None:
    """Set-Cookie, hop-by-hop headers (also those Connection names) and spoofed Grantkeeper-* headers from the
    upstream never reach the caller; ordinary headers do."""
    response = caller.request("GET", "things")
    assert response.headers["x-upstream"] == "kept"
    for name in ("set-cookie", "x-hop", "keep-alive", OUTCOME_HEADER):
        assert name not in response.headers, name
    assert response.json()["ok"] is True


def test_response_header_carrying_the_token_is_dropped(caller: Caller, caplog: pytest.LogCaptureFixture) -> None:
    """An upstream that echoes the Authorization value in a header does not hand the token to the caller."""
    response = caller.request("GET", "echo-header")
    assert response.status_code == 200 and "x-debug" not in response.headers
    assert "x-debug" in caplog.text.lower()
    caller.scan(caplog.text.encode())


def test_401_invalid_token_reported_and_retried_once(caller: Caller, tokens: Tokens, upstream: tuple) -> None:
    """A rejected token is reported (exactly that token) and the request re-sent once with the fresh one; the
    small body is replayed whole."""
    rejected = tokens.current
    upstream[0].valid.discard(rejected)
    response = caller.request("POST", "upload", content=b"payload" * 100)
    assert response.status_code == 200 and response.json()["bytes"] == 700
    assert response.headers[OUTCOME_HEADER] == "retried"
    assert tokens.reported == [rejected]
    first, second = upstream[0].seen
    assert first.header("authorization") == f"Bearer {rejected}"
    assert second.header("authorization") == f"Bearer {tokens.current}" != f"Bearer {rejected}"


def test_second_rejection_is_final(caller: Caller, tokens: Tokens, upstream: tuple) -> None:
    response = caller.request("GET", "reject-always")
    assert response.status_code == 401 and response.headers[OUTCOME_HEADER] == "rejected_again"
    assert len(upstream[0].seen) == 2 and len(tokens.reported) == 1
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_401_without_invalid_token_is_not_reported(caller: Caller, tokens: Tokens, upstream: tuple) -> None:
    """Like the httpx bridge's default: a 401 with no invalid_token challenge is the API's answer, not a stale
    token; no report, no retry."""
    response = caller.request("GET", "plain-401")
    assert response.status_code == 401 and OUTCOME_HEADER not in response.headers
    assert tokens.reported == [] and len(upstream[0].seen) == 1


def test_streamed_body_not_replayed(caller: Caller, tokens: Tokens, upstream: tuple, settings: ProxySettings) -> None:
    """A body longer than the replay buffer streams through once: its 401 is reported, returned as is, and
    marked not_replayable; the upstream saw one request."""
    settings.limits = replace(settings.limits, replay_buffer_bytes=4096)
    rejected = tokens.current
    upstream[0].valid.discard(rejected)
    response = caller.request("POST", "upload", content=pattern(256 * 1024))
    assert response.status_code == 401 and response.headers[OUTCOME_HEADER] == "not_replayable"
    assert tokens.reported == [rejected]
    [only] = upstream[0].seen
    assert only.body_bytes == 256 * 1024


# --- paths ---------------------------------------------------------------------------------------------------

ESCAPES = [
    "../secret",
    "..",
    ".",
    "things/../../secret",
    "%2e%2e/secret",
    "%2E%2E/secret",
    ".%2e/secret",
    "%252e%252e/secret",
    "things/..%2f..%2fsecret",
    "things%2f..%2f..%2fsecret",
    "/127.0.0.1:1/x",
    "/evil.example/x",
    "things//x",
    "http://evil.example/x",
    "http:%2f%2fevil.example/x",
    "https:evil.example",
    "..\\secret",
    "%5c..%5csecret",
    "things/%00",
    "things/%09",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_path_escape_refused(caller: Caller, upstream: tuple, path: str) -> None:
    """Each attempt to leave the base URL is a 400 proxy_path_refused problem and nothing reaches the upstream."""
    status, _, body = caller.raw(path)
    assert status == 400, body
    assert json.loads(body)["title"] == "proxy_path_refused"
    assert upstream[0].seen == []


def test_encoded_slash_inside_segment_kept(caller: Caller, upstream: tuple) -> None:
    """GitLab-style ``group%2Fproject`` reaches the upstream still encoded, not split into two segments."""
    response = caller.request("GET", "group%2Fproject/issues")
    assert response.status_code == 200
    assert seen(upstream) == ["/api/group%2Fproject/issues"]


def test_upstream_url_joins_under_the_base() -> None:
    assert upstream_url("https://api.example/v2/", "a/b%20c", b"x=1") == "https://api.example/v2/a/b%20c?x=1"
    assert upstream_url("https://api.example", "", b"") == "https://api.example/"
    with pytest.raises(ProxyPathRefused) as caught:
        upstream_url("https://api.example/v2", "%2e%2e/admin", b"")
    assert caught.value.http_status == 400 and caught.value.code == "proxy_path_refused"
    # Starlette's {path:path} never matches a decoded CR/LF (a 404 before the proxy), so this one is checked here
    with pytest.raises(ProxyPathRefused):
        upstream_url("https://api.example/v2", "a%0d%0aX-Injected:%201", b"")


# --- redirects -----------------------------------------------------------------------------------------------


def test_same_origin_redirect_followed_with_the_token(caller: Caller, tokens: Tokens, upstream: tuple) -> None:
    response = caller.request("GET", "redirect-same")
    assert response.status_code == 200 and response.json()["path"] == "/api/things"
    assert seen(upstream) == ["/api/redirect-same", "/api/things"]
    assert all(s.header("authorization") == f"Bearer {tokens.current}" for s in upstream[0].seen)


def test_redirect_to_other_origin_refused(caller: Caller, upstream: tuple, other: tuple) -> None:
    """A redirect to another port on the same host is another origin: 502, not followed, not handed on."""
    upstream[0].other_origin = other[1].url
    response = caller.request("GET", "redirect-other")
    body = problem(response, 502, "upstream_redirect_refused")
    assert "location" not in response.headers and "/api/things" not in str(body["detail"])
    assert other[0].seen == []


def test_redirect_loop_stops(caller: Caller, upstream: tuple, settings: ProxySettings) -> None:
    settings.limits = replace(settings.limits, max_redirects=3)
    problem(caller.request("GET", "redirect-loop"), 502, "upstream_redirect_refused")
    assert len(upstream[0].seen) == 4


def test_307_replays_a_small_body(caller: Caller, upstream: tuple) -> None:
    response = caller.request("POST", "redirect-307", content=b"abc" * 1000)
    assert response.status_code == 200 and response.json() == {"bytes": 3000, "sha256": response.json()["sha256"]}
    assert seen(upstream) == ["/api/redirect-307", "/api/upload"]


def test_307_with_a_streamed_body_refused(caller: Caller, upstream: tuple, settings: ProxySettings) -> None:
    settings.limits = replace(settings.limits, replay_buffer_bytes=1024)
    problem(caller.request("POST", "redirect-307", content=pattern(128 * 1024)), 502, "upstream_redirect_refused")
    assert seen(upstream) == ["/api/redirect-307"]


# --- sizes and streaming ---------------------------------------------------------------------------------------


def test_streaming_upload_and_download_never_whole_in_memory(caller: Caller, settings: ProxySettings) -> None:
    """32 MiB up and 32 MiB down through the proxy (the caller, the proxy app and the upstream all live in this
    process) while the traced peak stays far below the body size."""
    size = 32 * MiB
    settings.limits = replace(settings.limits, max_request_bytes=64 * MiB)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = caller.http.post(caller.base + "upload", content=pattern(size))
        _, up_peak = tracemalloc.get_traced_memory()
        assert response.status_code == 200
        assert response.json() == {"bytes": size, "sha256": pattern_sha256(size)}
        tracemalloc.reset_peak()
        received = 0
        with caller.http.stream("GET", caller.base + f"download?size={size}") as download:
            assert download.status_code == 200
            for chunk in download.iter_raw():
                received += len(chunk)
        _, down_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert up_peak < 8 * MiB, up_peak
    assert down_peak < 8 * MiB, down_peak


def test_request_over_cap_declared(caller: Caller, upstream: tuple, settings: ProxySettings) -> None:
    settings.limits = replace(settings.limits, max_request_bytes=1000)
    problem(caller.request("POST", "upload", content=b"x" * 1001), 413, "proxy_request_too_large")
    assert upstream[0].seen == []


def test_request_over_cap_streamed(caller: Caller, upstream: tuple, settings: ProxySettings) -> None:
    """A chunked body (no Content-Length) is counted as it streams and stopped at the cap."""
    settings.limits = replace(settings.limits, max_request_bytes=200 * 1024, replay_buffer_bytes=1024)
    response = caller.request("POST", "upload", content=pattern(MiB))
    problem(response, 413, "proxy_request_too_large")
    assert all(s.body_bytes <= 200 * 1024 for s in upstream[0].seen)


def test_response_over_cap_declared(caller: Caller, settings: ProxySettings) -> None:
    settings.limits = replace(settings.limits, max_response_bytes=1024)
    problem(caller.request("GET", "declared-huge"), 502, "upstream_too_large")


def test_response_over_cap_streamed_is_cut_off(caller: Caller, settings: ProxySettings) -> None:
    """No Content-Length: the headers went out, so the caller's connection is aborted mid-body; it sees an
    incomplete response, never a complete-looking truncated one."""
    settings.limits = replace(settings.limits, max_response_bytes=256 * 1024)
    received = 0
    with (  # noqa: PT012 (the error comes while reading the body)
        pytest.raises(httpx.RemoteProtocolError),
        caller.http.stream("GET", caller.base + f"download?size={MiB}") as download,
    ):
        assert download.status_code == 200
        for chunk in download.iter_raw():
            received += len(chunk)
    assert received <= 256 * 1024 + 64 * 1024


def test_exact_length_download(caller: Caller) -> None:
    response = caller.request("GET", "download?size=100000&length=1")
    assert response.headers["content-length"] == "100000" and response.content == b"".join(pattern(100000))


# --- upstream failures ---------------------------------------------------------------------------------------


def test_upstream_down_is_502(caller: Caller, settings: ProxySettings) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    settings.base_url = f"http://127.0.0.1:{port}/api"
    body = problem(caller.request("GET", "things?key=signature"), 502, "upstream_unreachable")
    assert "signature" not in str(body["detail"])


def test_small_answer_cut_short_is_502_not_a_truncated_200(caller: Caller) -> None:
    """A small answer (declared length within one chunk) is read whole before anything is answered, so an upstream
    that breaks it off mid-body is a clean 502, not 200 headers followed by an aborted connection."""
    problem(caller.request("GET", "short-body"), 502, "upstream_unreachable")


def test_upstream_timeout_is_504(caller: Caller, settings: ProxySettings) -> None:
    settings.limits = replace(settings.limits, timeout=0.5)
    problem(caller.request("GET", "slow"), 504, "upstream_timeout")


def test_limits_defaults() -> None:
    limits = ProxyLimits()
    assert (limits.max_request_bytes, limits.max_response_bytes, limits.timeout, limits.max_redirects) == (
        10 * MiB, 100 * MiB, 60.0, 5,
    )  # fmt: skip


# --- with a real keeper --------------------------------------------------------------------------------------

pytest_plugins = ["tests.integration_fixtures"]  # the clock and sim fixtures


def test_with_async_keeper_and_simulator(tmp_path: Path, sim: object, clock: FakeClock) -> None:
    """Wired as serve wires it: `AsyncKeeper.access_token` / `report_rejected` behind the proxy, the simulator's
    /resource upstream. A token the resource server expired (its clock moved) is reported, the keeper
    refreshes once, and the caller gets the answer to the retried request, never a token."""
    url = f"sqlite://{tmp_path / 'grants.db'}"
    with keeper_with_grant(url, sim):
        pass
    holder: dict[str, AsyncKeeper] = {}

    @contextlib.asynccontextmanager
    async def keeper_running() -> AsyncIterator[AsyncKeeper]:
        holder["keeper"] = await AsyncKeeper.open(url, policy=FAST_POLICY)
        try:
            yield holder["keeper"]
        finally:
            await holder["keeper"].aclose()

    async def get_token() -> str:
        return await holder["keeper"].access_token("g")

    async def report(token: str) -> None:
        await holder["keeper"].report_rejected("g", token)

    settings = ProxySettings(base_url=sim.base_url)  # type: ignore[attr-defined]
    proxy = Served(proxy_app(settings, get_token, report, also_running=keeper_running))
    try:
        with httpx.Client(trust_env=False, timeout=30) as http:
            first = http.get(proxy.url + "/v1/proxy/g/resource")
            assert first.status_code == 200 and first.json() == {"ok": True}
            with Keeper.open(url) as keeper:
                generation = keeper.store.get_grant("g").generation
            clock.advance(EXPIRE_ALL)
            second = http.get(proxy.url + "/v1/proxy/g/resource")
            assert second.status_code == 200 and second.headers[OUTCOME_HEADER] == "retried"
        assert refresh_calls(sim) == 2
        with Keeper.open(url) as keeper:
            assert keeper.store.get_grant("g").generation == generation + 1
            token = keeper.access_token("g")
        for response in (first, second):
            assert token not in response.text and token not in repr(response.headers.raw)
    finally:
        proxy.stop()
