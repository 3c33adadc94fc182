"""A hostile token endpoint for tests: a real HTTP server on 127.0.0.1 whose answers each test scripts.

`HostileEndpoint` stands where a broken proxy or a broken provider would, in front of a `ProviderSimulator`:

* `Rewrite(edit)`: the request goes on to the simulator, which really processes it (and rotates), then `edit`
  changes the JSON answer on its way back, the way a proxy that rewrote ``expires_in`` did;
* `Reply(...)`: the endpoint answers by itself; the simulator never sees the request;
* an empty script passes every request through unchanged.

Every token value a scripted answer carries is remembered (`injected`), and `HostileWorld` collects every
output of a test (CLI stdout/stderr at both verbosities, exception texts and tracebacks, log records of every
logger at DEBUG, every file under the test directory) and `scan`s it for every token and any 8-character
fragment of one, as tests/system/test_canary.py does. The endpoint also serves ``/resource``, which records the
headers it receives (to prove an injected header never went out) and asks the simulator whether the bearer
token is valid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import AsyncKeeper, Grant, GrantkeeperError, Keeper, Provider, RotationMode, Secret
from grantkeeper.cli.main import cli
from grantkeeper.integrations.httpx_auth import GrantAuth
from grantkeeper.redact.tracebacks import format_exception
from grantkeeper.testing.simulator import ProviderSimulator
from tests.helpers import FAST_POLICY
from tests.system.test_canary import find_leaks

#: FAST_POLICY with room for two HTTP hops (this endpoint relays to the simulator) on a loaded machine: a request
#: cut off by its deadline is ambiguous, and its re-send against the strict simulator ends the grant, which is right
#: but not what these tests are about. No test here scripts a slow answer.
HOSTILE_POLICY = replace(FAST_POLICY, request_timeout=10.0, lease_ttl=25.0, deadline=30.0)

__all__ = [
    "HostileEndpoint",
    "HostileFactory",
    "HostileWorld",
    "Outcome",
    "Reply",
    "Rewrite",
    "hostile",
    "make_hostile",
]

Json = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """Answer without asking the simulator."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: object, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode())


@dataclass(frozen=True)
class Rewrite:
    """Let the simulator answer (and rotate), then change its JSON answer with `edit` (which may also return a
    whole `Reply`: an HTML page in place of the rotated answer, say)."""

    edit: Callable[[Json], Json | Reply]


Answer = Reply | Rewrite


@dataclass
class Seen:
    """One request the endpoint received: the path, the refresh token sent (token requests), the headers."""

    path: str
    refresh_token: str | None
    headers: dict[str, str]
    status: int = 0


class HostileEndpoint:
    """Scripted answers in front of `upstream`; see the module docstring."""

    def __init__(self, upstream: ProviderSimulator) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.injected: set[str] = set()
        self._script: list[Answer] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-endpoint", daemon=True)

    def __enter__(self) -> HostileEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    @property
    def resource_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/resource"

    def script(self, *answers: Answer) -> None:
        """Answer the next token requests with these, in order; after them, pass through."""
        with self._lock:
            self._script.extend(answers)

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/token"]

    def _next(self) -> Answer | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        if path == "/resource":
            reply = httpx.get(self.upstream.base_url + "/resource", headers={
                "Authorization": headers.get("authorization", "")}, timeout=10)  # fmt: skip
            return reply.status_code, reply.content, "application/json"
        answer = self._next()
        if isinstance(answer, Reply):
            self._remember(answer.body)
            return answer.status, answer.body, answer.content_type
        forwarded = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        reply = httpx.post(self.upstream.url, content=body, headers=forwarded, timeout=10)
        if answer is None or reply.status_code != 200:
            return reply.status_code, reply.content, reply.headers.get("content-type", "application/json")
        self._remember(reply.content)  # the simulator's own tokens are known to it; the successor is in here too
        edited = answer.edit(reply.json())
        if isinstance(edited, Reply):
            self._remember(edited.body)
            return edited.status, edited.body, edited.content_type
        body = json.dumps(edited).encode()
        self._remember(body)
        return 200, body, "application/json"

    def _remember(self, body: bytes) -> None:
        """Every string value of a scripted answer is a token to look for in the outputs."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict):
            self.injected |= {v for v in data.values() if isinstance(v, str) and len(v) >= 12}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: nothing of a request reaches stderr."""

            def _serve(self, body: bytes) -> None:
                path = self.path.split("?", 1)[0]
                headers = {k.lower(): v for k, v in self.headers.items()}
                form = dict(parse_qsl(body.decode("utf-8", "replace"))) if path == "/token" else {}
                seen = Seen(path, form.get("refresh_token"), headers)
                endpoint.seen.append(seen)
                seen.status, payload, ctype = endpoint._answer(path, headers, body)
                self.send_response(seen.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def do_GET(self) -> None:
                self._serve(b"")

        return Handler


@dataclass
class Outcome:
    """What one way of asking for a token produced: the token handed out, or the error, and the exit code."""

    token: str | None = None
    error: BaseException | None = None
    exit_code: int = 0
    resource_status: int | None = None  # GrantAuth: the resource's answer


@dataclass
class HostileWorld:
    """A simulator, the hostile endpoint in front of it, a store, and every output captured for the scan."""

    tmp_path: Path
    sim: ProviderSimulator
    endpoint: HostileEndpoint
    caplog: pytest.LogCaptureFixture
    url: str = ""
    captures: list[tuple[str, str]] = field(default_factory=list, repr=False)
    #: Tokens a test planted itself (in the store, say), to look for in the outputs too.
    planted: set[str] = field(default_factory=set, repr=False)
    stderr: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.url = f"sqlite://{self.tmp_path}/s.db"

    # -- setup ----------------------------------------------------------------------------------------------

    def provider(self, **options: Any) -> Provider:
        settings: Json = {"token_url": self.endpoint.url, "client_id": self.sim.client_id,
                          "client_secret": Secret(self.sim.client_secret), "rotation": RotationMode.ALWAYS}  # fmt: skip
        return Provider(name="hostile", **{**settings, **options})

    def add_grant(self, *, access_token: str | None = None, **provider: Any) -> str:
        """A fresh grant at the simulator, refreshed through the endpoint; returns its refresh token."""
        refresh = self.sim.issue_grant()
        with Keeper.open(self.url) as keeper:
            keeper.add_provider(self.provider(**provider))
            keeper.store.import_grant(
                "g", provider="hostile", refresh_token=Secret(refresh), scopes=(), now=keeper.clock.now(),
                access_token=Secret(access_token) if access_token else None,
                expires_at=keeper.clock.now() + 3600 if access_token else None,
            )  # fmt: skip
        if access_token:
            self.planted.add(access_token)
        return refresh

    def grant(self) -> Grant:
        with Keeper.open(self.url) as keeper:
            return keeper.store.get_grant("g")

    # -- the four ways to ask for a token --------------------------------------------------------------------

    def ask(self, driver: str) -> Outcome:
        """Ask for grant g's access token through `driver`: cli, keeper, async or grantauth."""
        if driver == "cli":
            return self.cli("token", "g")
        try:
            if driver == "keeper":
                with Keeper.open(self.url, policy=HOSTILE_POLICY) as keeper:
                    return Outcome(token=keeper.access_token("g"))
            if driver == "async":
                return Outcome(token=asyncio.run(self._ask_async()))
            assert driver == "grantauth"
            with Keeper.open(self.url, policy=HOSTILE_POLICY) as keeper, httpx.Client(auth=GrantAuth(keeper, "g")) as c:
                response = c.get(self.endpoint.resource_url)
                token = response.request.headers["authorization"].partition(" ")[2]
                return Outcome(token=token, resource_status=response.status_code)
        except Exception as exc:
            self.capture_exception(f"{driver}: error", exc)
            return Outcome(error=exc, exit_code=exc.exit_code if isinstance(exc, GrantkeeperError) else 1)

    async def _ask_async(self) -> str:
        async with await AsyncKeeper.open(self.url, policy=HOSTILE_POLICY) as keeper:
            return await keeper.access_token("g")

    def cli(self, *args: str, verbose: bool = True) -> Outcome:
        """Run a command (at -v: the most it says) and capture what it printed. A token printed by `token` is
        returned, not captured: printing it is that command's job. `stderr` of the last run is kept for checks."""
        verbosity = ["-v"] if verbose else []
        result = CliRunner().invoke(cli, ["--store", self.url, *verbosity, *args])
        label = " ".join(["grantkeeper", *verbosity, *args])
        printed_token = args[0] == "token" and result.exit_code == 0
        if not printed_token:
            self.capture(f"{label}: stdout", result.stdout)
        self.capture(f"{label}: stderr", result.stderr)
        self.stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            self.capture_exception(label, result.exception)
        return Outcome(token=result.stdout.rstrip("\n") if printed_token else None, exit_code=result.exit_code)

    # -- captures and the scan -------------------------------------------------------------------------------

    def capture(self, name: str, data: object) -> None:
        self.captures.append((name, data if isinstance(data, str) else repr(data)))

    def capture_exception(self, name: str, exc: BaseException) -> None:
        self.capture(f"{name}: str", str(exc))
        self.capture(f"{name}: repr", repr(exc))
        self.capture(f"{name}: traceback", "".join(traceback.format_exception(exc)))
        self.capture(f"{name}: traceback with locals (redacted)", format_exception(exc, with_locals=True))

    def tokens(self) -> set[str]:
        return set(self.sim.issued_tokens()) | self.endpoint.injected | self.planted | {self.sim.client_secret}

    def scan(self) -> None:
        """No token (nor an 8-character fragment of one), no escape sequence and no injected header text in any
        output: captures, log records of every logger, and the bytes of every file under the test directory."""
        self.capture("log records (DEBUG, all loggers)", self.caplog.text)
        self.capture("log record arguments", repr([(r.name, r.args) for r in self.caplog.records]))
        text = "".join(t for _, t in self.captures)
        assert "\x1b" not in text and "X-Injected" not in text  # no escape sequence, no injected header text
        for path in sorted(self.tmp_path.rglob("*")):
            if path.is_file():
                self.capture(f"file {path.relative_to(self.tmp_path)}", path.read_bytes().decode("latin-1"))
        tokens = self.tokens()
        assert tokens
        assert find_leaks(self.captures, tokens) == []


HostileFactory = Callable[..., HostileWorld]


@pytest.fixture
def make_hostile(tmp_path: Path, caplog: pytest.LogCaptureFixture, make_sim: Callable[..., object]) -> Iterator[
        HostileFactory]:  # fmt: skip
    """``make_hostile(**simulator_options)`` -> a `HostileWorld` (logs captured at DEBUG on every logger)."""
    caplog.set_level(logging.DEBUG)
    endpoints: list[HostileEndpoint] = []

    def factory(**sim_options: object) -> HostileWorld:
        sim = make_sim(**sim_options)
        assert isinstance(sim, ProviderSimulator)
        endpoint = HostileEndpoint(sim).__enter__()
        endpoints.append(endpoint)
        return HostileWorld(tmp_path, sim, endpoint, caplog)

    yield factory
    for endpoint in endpoints:
        endpoint.__exit__()


@pytest.fixture
def hostile(make_hostile: HostileFactory) -> HostileWorld:
    """A `HostileWorld` around a rotating simulator with reuse detection and no grace."""
    return make_hostile()
