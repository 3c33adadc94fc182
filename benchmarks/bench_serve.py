"""``grantkeeper serve`` over HTTP: the proxy vs a direct call, and the bare FastAPI route every serve figure is
read against.

Every app under test is a ``module:factory`` string served by its own ``uvicorn --factory`` process with the
settings `grantkeeper.serve.runner` gives uvicorn (`UVICORN_ARGS`), on 127.0.0.1. One load generator drives them
all: ``wrk`` (Debian package ``wrk``) when it is on PATH, else an ``httpx.AsyncClient`` in this process, with 1
connection (latency without queueing) or `CONNECTIONS` concurrent connections (throughput). Each case runs in
rounds of a fixed duration; rounds alternate between the cases with the order flipping every round
(`benchmarks._common.interleave`); a case's figures are the medians of its per-round GETs/s, p50 and p99.

Cases:

- ``bare``: `bare_app`, a FastAPI route returning a constant string: the floor of any route served this way.
- ``direct``: `upstream_app`'s ``GET /api/things`` called straight, with ``Authorization: Bearer <token>``: an
  instant resource. ``direct_slow``: its ``GET /api/slow``, the same after `SERVICE_TIME` (20 ms, about what a
  provider's API takes).
- ``proxy`` / ``proxy_slow``: the same GETs through `proxy_app`: ``/v1/proxy/bench/...`` mounted on
  `grantkeeper.serve.proxy.proxy_request` with serve's upstream client (`grantkeeper.serve.upstream.api_session`,
  aiohttp), forwarding with the token injected (a constant, cached token: the keeper's fast path is measured by
  ``cached``).
- ``relay``, ``relay_httpcore``, ``relay_aiohttp``: the instant GET through a route that only GETs the upstream on
  a kept-alive client and answers its body (`RELAYS`: httpx's ``AsyncClient``, httpcore's pool, aiohttp's
  ``ClientSession``), the candidate upstream clients side by side; a client that is not installed is skipped.
- ``serve_proxy`` / ``serve_proxy_slow``: the same GETs through the real ``grantkeeper serve``
  (`serve_token_target`), with its API key, on ``/v1/proxy/<grant>/...``: authentication, audit, metrics, the
  grant's cached token from its keeper.
- ``serve_token``: ``GET /v1/grants/<grant>/token`` on that serve (a cached token every time).

Rows: proxy p50 / direct p50 for the minimal app and for serve, for the instant and the 20 ms resource, at 1 and
at `CONNECTIONS` connections (target <= 1.3; on the instant resource this is a structural floor: the proxy is
itself an HTTP server, so its own request handling alone costs about what the resource's does); serve token
GETs/s over the bare route's (target >= 0.7) and its p99 over the bare p99 (target <= 1.5). Notes: proxy /
relay_aiohttp, every relay / direct, and serve's RSS holding `MEMORY_FULL` grants' cached tokens (`serve_memory`,
after the timed rounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import IO, Any

from benchmarks._common import (
    Report,
    Row,
    Sample,
    cpu_seconds,
    format_value,
    interleave,
    sim_provider,
    standalone,
    summarize,
)

NAME = "serve"
TITLE = "serve proxy vs direct GET, and the bare FastAPI route"
PROXY_TARGET = 1.3
SERVE_RPS_TARGET = 0.7
SERVE_P99_TARGET = 1.5
CONNECTIONS = 16
TOKEN = "bench-access-token-" + "x" * 24
SERVE_TOKEN_ENV = "BENCH_SERVE_TOKEN"
SERVE_GRANT = "bench"
MEMORY_FULL, MEMORY_QUICK = 100_000, 2_000  # grants whose tokens serve holds for the memory figure
SERVE_RATE = 1_000_000  # per-key requests/s and burst given to serve for the run (its default would throttle it)
#: The service time of the "realistic" resource, ``/api/slow``: about what a provider's API takes to answer.
SERVICE_TIME = 0.020
#: What `grantkeeper.serve.runner` gives uvicorn: its choice of HTTP parser and loop (h11 and asyncio unless
#: httptools/uvloop are installed), no proxy headers (serve's default without --behind-proxy), no Server header,
#: no access log.
UVICORN_ARGS = ["--host", "127.0.0.1", "--http", "auto", "--loop", "auto", "--workers", "1", "--no-access-log",
                "--no-proxy-headers", "--no-server-header", "--log-level", "warning",
                "--timeout-graceful-shutdown", "2"]  # fmt: skip


# --- the apps under test (factories, imported by the uvicorn processes) --------------------------------------


def bare_app() -> Any:
    """A FastAPI route returning a constant string: what any FastAPI route under uvicorn costs at least."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/const", response_class=PlainTextResponse)
    async def const() -> str:
        return "ok"

    return app


def upstream_app() -> Any:
    """The API the proxy forwards to: a JSON answer for a request bearing `TOKEN` (or the serve grant's access
    token, ``$BENCH_SERVE_TOKEN``), 401 otherwise."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    app = FastAPI()
    expected = {f"Bearer {token}" for token in (TOKEN, os.environ.get(SERVE_TOKEN_ENV)) if token}

    async def things(request: Any) -> Response:
        if request.headers.get("authorization") not in expected:
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return JSONResponse({"things": [1, 2, 3]})

    async def slow(request: Any) -> Response:
        await asyncio.sleep(SERVICE_TIME)
        return await things(request)

    # Starlette-style routes: the handlers take the request as is (FastAPI would introspect the annotations,
    # which name types imported in here, not at module level, to keep fastapi off `benchmarks.run`'s imports).
    app.add_route("/api/things", things, methods=["GET"])
    app.add_route("/api/slow", slow, methods=["GET"])
    return app


def proxy_app() -> Any:
    """`proxy_request` mounted as serve mounts it, with serve's upstream client (`api_session`), forwarding to
    ``$BENCH_UPSTREAM`` with `TOKEN`."""
    import aiohttp
    from fastapi import FastAPI
    from fastapi.responses import Response

    from grantkeeper.serve.proxy import ProxyLimits, proxy_request
    from grantkeeper.serve.upstream import api_session
    from grantkeeper.tokens.transport import Network

    base_url = os.environ["BENCH_UPSTREAM"] + "/api"
    limits = ProxyLimits()
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with api_session(Network(), base_url) as client:
            state["client"] = client
            yield

    async def get_token() -> str:
        return TOKEN

    async def report_rejected(_: str) -> None:
        raise RuntimeError("the benchmark upstream rejected the token")

    app = FastAPI(lifespan=lifespan)

    async def proxy(request: Any) -> Response:
        return await proxy_request(request, client=state["client"], base_url=base_url,
                                   path=request.path_params["path"], get_token=get_token,
                                   report_rejected=report_rejected, limits=limits)  # fmt: skip

    app.add_route("/v1/proxy/{name}/{path:path}", proxy, methods=["GET"])
    return app


def relay_app() -> Any:
    """The floor of any proxy built this way: a route that GETs ``$BENCH_UPSTREAM/api/things`` with `TOKEN` on a
    kept-alive ``httpx.AsyncClient`` and answers its body, with no path checks, header filtering or 401 handling."""
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import Response

    url = os.environ["BENCH_UPSTREAM"] + "/api/things"
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(trust_env=False, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            state["client"] = client
            yield

    app = FastAPI(lifespan=lifespan)

    async def relay(_: Any) -> Response:
        answer = await state["client"].get(url)
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    app.add_route("/v1/proxy/{name}/{path:path}", relay, methods=["GET"])
    return app


def relay_httpcore_app() -> Any:
    """`relay_app` on httpcore's ``AsyncConnectionPool`` directly (httpx's transport, without httpx's models)."""
    import httpcore
    from fastapi import FastAPI
    from fastapi.responses import Response

    url = os.environ["BENCH_UPSTREAM"] + "/api/things"
    headers = [(b"Authorization", f"Bearer {TOKEN}".encode())]
    state: dict[str, httpcore.AsyncConnectionPool] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpcore.AsyncConnectionPool(max_connections=200, max_keepalive_connections=64) as pool:
            state["pool"] = pool
            yield

    app = FastAPI(lifespan=lifespan)

    async def relay(_: Any) -> Response:
        answer = await state["pool"].request("GET", url, headers=headers)
        return Response(answer.content, status_code=answer.status, media_type="application/json")

    app.add_route("/v1/proxy/{name}/{path:path}", relay, methods=["GET"])
    return app


def relay_aiohttp_app() -> Any:
    """`relay_app` on an ``aiohttp.ClientSession`` (its C HTTP parser when built with it)."""
    import aiohttp
    from fastapi import FastAPI
    from fastapi.responses import Response

    url = os.environ["BENCH_UPSTREAM"] + "/api/things"
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=200, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {TOKEN}"},
                                         trust_env=False, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:  # fmt: skip
            state["session"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    async def relay(_: Any) -> Response:
        async with state["session"].get(url, allow_redirects=False) as answer:
            body = await answer.read()
            return Response(body, status_code=answer.status, media_type="application/json")

    app.add_route("/v1/proxy/{name}/{path:path}", relay, methods=["GET"])
    return app


#: The relay's upstream clients, measured side by side: case name -> (factory, the module it needs).
RELAYS = {"relay": ("relay_app", "httpx"), "relay_httpcore": ("relay_httpcore_app", "httpcore"),
          "relay_aiohttp": ("relay_aiohttp_app", "aiohttp")}  # fmt: skip


@dataclass(frozen=True)
class ServeTarget:
    """A running ``grantkeeper serve``: its URL, the grant, the API key, and the grant's (cached) access token."""

    url: str
    grant: str
    api_key: str
    access_token: str

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.api_key}"),)


@contextlib.contextmanager
def serve_token_target(upstream_url: str) -> Iterator[ServeTarget]:
    """The real ``grantkeeper serve`` (``python -m grantkeeper --store URL serve``) on a free loopback port.

    Its store is an SQLite file in a temporary directory (key file beside it) holding one provider, the provider
    simulator (access tokens live a day, so every GET of the run is a cache hit), with ``api_base_url`` =
    `upstream_url`, one grant whose access token was fetched once before serve starts, and one API key (scopes
    token and proxy) made with `grantkeeper.serve.apikeys.new_key` and stored with ``create_api_key``. The
    per-key rate limit is raised through ``GRANTKEEPER_SERVE_RATE``/``_BURST`` (`SERVE_RATE`): the default would
    answer most of the benchmark's GETs 429. Serve's JSON log goes to a file in the temporary directory.
    """
    from grantkeeper import Keeper
    from grantkeeper.testing.simulator import ProviderSimulator

    with ProviderSimulator(access_ttl=86400.0) as sim, tempfile.TemporaryDirectory(prefix="grantkeeper-serve-") as tmp:
        store_url = f"sqlite:///{tmp}/serve.db"
        with Keeper.open(store_url) as keeper:
            keeper.add_provider(dataclasses.replace(sim_provider(sim), api_base_url=upstream_url))
            keeper.import_grant(SERVE_GRANT, provider="sim", refresh_token=sim.issue_grant())
            access_token = keeper.access_token(SERVE_GRANT)
        with _serve(store_url, "token,proxy", Path(tmp)) as (url, api_key, _):
            yield ServeTarget(url, SERVE_GRANT, api_key, access_token)


@contextlib.contextmanager
def _serve(store_url: str, scopes: str, tmp: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """``grantkeeper serve`` on `store_url` with a new API key for every grant (`scopes`), its rate limit raised
    to `SERVE_RATE`, its log in `tmp`; yields (URL, API key, process)."""
    from grantkeeper.serve.apikeys import new_key
    from grantkeeper.stores import open_store

    made = new_key("bench", grants="*", scopes=scopes, now=time.time(), lifetime=None)
    store = open_store(store_url)
    try:
        store.create_api_key(made.record, key=made.key)
    finally:
        store.close()
    port = _free_port()
    command = [sys.executable, "-m", "grantkeeper", "--store", store_url, "serve", "--port", str(port)]
    env = {"GRANTKEEPER_SERVE_RATE": str(SERVE_RATE), "GRANTKEEPER_SERVE_BURST": str(SERVE_RATE)}
    with open(tmp / "serve.log", "w") as log, _process(command, port, env, stderr=log) as proc:
        yield f"http://127.0.0.1:{port}", made.key, proc


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process `pid`, KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def serve_memory(count: int) -> tuple[int, int, int]:
    """RSS of a ``grantkeeper serve`` holding `count` grants' cached access tokens: (KiB after one token GET, KiB
    after a token GET for every grant, peak KiB).

    The store is `benchmarks.peers.memory`'s (the library's memory row): `count` grants ``bulk-NNNNNNN`` loaded by
    `benchmarks.bench_scale.make_rows`, every access token valid for an hour, so each first GET reads the grant
    once (a cache miss) and caches the token, and no GET reaches a provider. 16 concurrent httpx connections.
    """
    import httpx

    from benchmarks.bench_scale import KEY, RECOVERY_ENV, _environ
    from benchmarks.peers.memory import _load_grantkeeper_store
    from grantkeeper.keys import KEY_ENV

    with (
        tempfile.TemporaryDirectory(prefix="grantkeeper-serve-mem-") as tmp,
        _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(Path(tmp) / "recovery")}),
    ):
        store_url = _load_grantkeeper_store(Path(tmp) / "memory.db", count)
        with _serve(store_url, "token", Path(tmp)) as (base, api_key, proc):
            url = base + "/v1/grants/bulk-{:07d}/token"
            headers = {"Authorization": f"Bearer {api_key}"}
            failed: list[int] = []

            async def touch(names: range) -> None:
                limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
                async with httpx.AsyncClient(trust_env=False, limits=limits, headers=headers, timeout=60) as client:
                    todo = iter(names)

                    async def worker() -> None:
                        for i in todo:
                            if (await client.get(url.format(i))).status_code != 200:
                                failed.append(i)

                    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))

            asyncio.run(touch(range(1)))
            before, _ = _rss_kib(proc.pid)
            asyncio.run(touch(range(count)))
            after, peak = _rss_kib(proc.pid)
        if failed:
            raise RuntimeError(f"serve memory: {len(failed)} of {count} token GETs were not answered 200")
    return before, after, peak


# --- servers ----------------------------------------------------------------------------------------------

#: Port -> pid of the servers running now, for the CPU each case's server spends per request.
SERVERS: dict[int, int] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(command: list[str], port: int, env: dict[str, str] | None = None, *,
             stderr: IO[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run `command` until it accepts connections on 127.0.0.1:`port`; stop it by pid at the end. While it runs,
    `SERVERS` maps `port` to its pid."""
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=os.getcwd(), stderr=stderr)
    SERVERS[port] = proc.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[:6])} did not start (exit status {proc.poll()})")
            time.sleep(0.05)
        yield proc
    finally:
        SERVERS.pop(port, None)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def served(factory: str, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """``uvicorn --factory`` for `factory` on `port` (a free loopback port by default); yields its base URL."""
    port = port or _free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port), *UVICORN_ARGS]
    with _process(command, port, env):
        yield f"http://127.0.0.1:{port}"


# --- load generators ------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    rps: float
    p50_ns: float
    p99_ns: float
    errors: int


_WRK_UNITS = {"us": 1e3, "ms": 1e6, "s": 1e9}


def _wrk_duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def wrk_round(url: str, headers: tuple[tuple[str, str], ...], seconds: float, connections: int) -> RoundResult:
    command = ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for name, value in headers:
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=120).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> RoundResult:
    """GETs/s, p50, p99 and failures from ``wrk --latency`` output."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if rps is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    count = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return RoundResult(float(rps.group(1)), _wrk_duration(percentiles["50"]), _wrk_duration(percentiles["99"]), count)


def httpx_round(url: str, headers: tuple[tuple[str, str], ...], seconds: float, connections: int) -> RoundResult:
    import httpx

    async def main() -> RoundResult:
        latencies: list[int] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, trust_env=False, headers=list(headers)) as client:
            stop = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop:
                    t0 = perf_counter_ns()
                    response = await client.get(url)
                    latencies.append(perf_counter_ns() - t0)
                    errors += response.status_code != 200

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        return RoundResult(len(latencies) / elapsed, q[49], q[98], errors)

    return asyncio.run(main())


def load_generator() -> tuple[str, Any]:
    return ("wrk", wrk_round) if shutil.which("wrk") else ("httpx.AsyncClient", httpx_round)


# --- the run --------------------------------------------------------------------------------------------------


Case = tuple[str, tuple[tuple[str, str], ...], int]  # URL, headers, connections


def _measure(cases: dict[str, Case], seconds: float, rounds: int, warmup: int,
             ) -> tuple[dict[str, dict[str, Sample]], int]:  # fmt: skip
    generator = load_generator()[1]
    per_round: dict[str, list[RoundResult]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}  # ns of the answering server's CPU per request

    def round_of(name: str) -> float:
        url, headers, connections = cases[name]
        pid = SERVERS[urllib.parse.urlsplit(url).port or 80]
        before = cpu_seconds(pid)
        result = generator(url, headers, seconds, connections)
        spent = cpu_seconds(pid) - before
        per_round[name].append(result)
        cpu[name].append(spent * 1e9 / max(1.0, result.rps * seconds))
        return result.p50_ns

    interleave({name: (lambda n=name: round_of(n)) for name in cases}, rounds=rounds + warmup, warmup=0)
    figures: dict[str, dict[str, Sample]] = {}
    errors = 0
    for name, results in per_round.items():
        kept = results[warmup:]
        errors += sum(r.errors for r in results)
        figures[name] = {
            "rps": summarize([r.rps for r in kept]),
            "p50": summarize([r.p50_ns for r in kept]),
            "p99": summarize([r.p99_ns for r in kept]),
            "cpu": summarize(cpu[name][warmup:]),
        }
    return figures, errors


def _token_rows(report: Report, figures: dict[str, Any]) -> None:
    """The token route's rows (throughput, p99) and its CPU and server-settings notes."""
    token, bare_fig = figures["serve_token"], figures["bare"]
    rps_ratio = token["rps"].median / bare_fig["rps"].median
    p99_ratio = token["p99"].median / bare_fig["p99"].median
    report.rows.append(Row(NAME, "cached token GETs/s (A/B: serve / bare)", "serve token route",
                           token["rps"].median, "bare route", bare_fig["rps"].median, "GETs/s", rps_ratio,
                           f">= {SERVE_RPS_TARGET}", rps_ratio >= SERVE_RPS_TARGET))  # fmt: skip
    report.rows.append(Row(NAME, "cached token GET p99", "serve token route", token["p99"].median, "bare route",
                           bare_fig["p99"].median, "ns", p99_ratio, f"<= {SERVE_P99_TARGET}",
                           p99_ratio <= SERVE_P99_TARGET))  # fmt: skip
    report.notes.append(f"server CPU per request (the answering process's user+system time / requests): bare "
                        f"{format_value(bare_fig['cpu'].median, 'ns')}, serve token route "
                        f"{format_value(token['cpu'].median, 'ns')}: bare / serve = "
                        f"{bare_fig['cpu'].median / token['cpu'].median:.2f} (what GETs/s would be with the CPU to "
                        "itself)")  # fmt: skip
    speedups = [name for name in ("httptools", "uvloop") if importlib.util.find_spec(name)] or ["neither"]
    report.notes.append(f"grantkeeper serve: uvicorn's defaults (httptools/uvloop installed: {', '.join(speedups)}), "
                        f"GRANTKEEPER_SERVE_RATE=GRANTKEEPER_SERVE_BURST={SERVE_RATE} for the run")  # fmt: skip


def run(quick: bool = False) -> Report:
    seconds, rounds, warmup = (1.0, 3, 1) if quick else (2.0, 7, 1)
    memory_grants = MEMORY_QUICK if quick else MEMORY_FULL
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    generator_name = load_generator()[0]
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    upstream_port = _free_port()  # serve's provider names the upstream before the upstream starts
    with contextlib.ExitStack() as stack:
        serve = stack.enter_context(serve_token_target(f"http://127.0.0.1:{upstream_port}/api"))
        bare = stack.enter_context(served("benchmarks.bench_serve:bare_app"))
        upstream = stack.enter_context(served("benchmarks.bench_serve:upstream_app",
                                              {SERVE_TOKEN_ENV: serve.access_token}, port=upstream_port))  # fmt: skip
        proxy = stack.enter_context(served("benchmarks.bench_serve:proxy_app", {"BENCH_UPSTREAM": upstream}))
        relays = {name: stack.enter_context(served(f"benchmarks.bench_serve:{factory}", {"BENCH_UPSTREAM": upstream}))
                  for name, (factory, module) in RELAYS.items() if importlib.util.find_spec(module)}  # fmt: skip
        # 1 connection: latency without queueing (the ratio's rows); CONNECTIONS: throughput under load.
        cases: dict[str, Case] = {}
        for suffix, connections in (("@1", 1), (f"@{CONNECTIONS}", CONNECTIONS)):
            cases["direct" + suffix] = (upstream + "/api/things", auth, connections)
            cases["proxy" + suffix] = (proxy + "/v1/proxy/bench/things", (), connections)
            for name, relay in relays.items():
                cases[name + suffix] = (relay + "/v1/proxy/bench/things", (), connections)
            cases["serve_proxy" + suffix] = (f"{serve.url}/v1/proxy/{serve.grant}/things", serve.headers, connections)
            cases["direct_slow" + suffix] = (upstream + "/api/slow", auth, connections)
            cases["proxy_slow" + suffix] = (proxy + "/v1/proxy/bench/slow", (), connections)
            cases["serve_proxy_slow" + suffix] = (f"{serve.url}/v1/proxy/{serve.grant}/slow", serve.headers,
                                                  connections)  # fmt: skip
        cases["bare"] = (bare + "/const", (), CONNECTIONS)
        cases["serve_token"] = (f"{serve.url}/v1/grants/{serve.grant}/token", serve.headers, CONNECTIONS)
        figures, errors = _measure(cases, seconds, rounds, warmup)
    if errors:
        raise RuntimeError(f"{errors} requests failed or were not answered 200 during the serve benchmark")

    resources = (("", "instant resource"), ("_slow", f"{SERVICE_TIME * 1000:.0f} ms resource"))
    for suffix, label in (("@1", "1 connection"), (f"@{CONNECTIONS}", f"{CONNECTIONS} connections")):
        for resource, named in resources:
            direct_p50 = figures["direct" + resource + suffix]["p50"].median
            for case, what, a_label in (("proxy", "the proxy (minimal app)", "proxy_request"),
                                        ("serve_proxy", "grantkeeper serve's proxy", "serve /v1/proxy")):  # fmt: skip
                p50 = figures[case + resource + suffix]["p50"].median
                ratio = p50 / direct_p50
                report.rows.append(Row(NAME, f"GET p50 through {what}, {named}, {label}", a_label, p50,
                                       "direct + token", direct_p50, "ns", ratio, f"<= {PROXY_TARGET}",
                                       ratio <= PROXY_TARGET))  # fmt: skip
        direct_p50 = figures["direct" + suffix]["p50"].median
        if "relay_aiohttp" + suffix in figures:
            relay_p50 = figures["relay_aiohttp" + suffix]["p50"].median
            report.notes.append(f"{label}: proxy_request p50 / relay_aiohttp p50 (the floor of an aiohttp hop in "
                                f"FastAPI) = {figures['proxy' + suffix]['p50'].median / relay_p50:.2f}")  # fmt: skip
        clients = ", ".join(f"{name} {figures[name + suffix]['p50'].median / direct_p50:.2f}"
                            for name in RELAYS if name + suffix in figures)  # fmt: skip
        missing = [module for name, (_, module) in RELAYS.items() if name + suffix not in figures]
        report.notes.append(f"{label}: relay p50 / direct p50 by upstream client: {clients}"
                            + (f" ({', '.join(missing)} not installed)" if missing else ""))  # fmt: skip
    _token_rows(report, figures)
    import httpx

    try:
        before, after, peak = serve_memory(memory_grants)
    except (httpx.HTTPError, RuntimeError) as exc:  # the timed rows above stand; the failure is reported, not hidden
        report.notes.append(f"MEMORY: NOT MEASURED: the {memory_grants:,}-grant pass failed: {type(exc).__name__}: "
                            f"{exc}")  # fmt: skip
    else:
        report.notes.append(
            f"MEMORY: grantkeeper serve holding {memory_grants:,} grants' cached tokens: RSS {after / 1024:.0f} MiB "
            f"(peak {peak / 1024:.0f} MiB), {(after - before) * 1024 / memory_grants:,.0f} bytes/grant over its "
            f"RSS after one token GET ({before / 1024:.0f} MiB)"
        )
    report.notes.append(f"load generator: {generator_name}, {seconds:g} s rounds, "
                        f"{rounds} measured rounds per case (+{warmup} warm-up)")  # fmt: skip
    report.notes.append(f"uvicorn {' '.join(UVICORN_ARGS)}")
    for name, fig in figures.items():
        report.notes.append(
            f"{name:<14} {fig['rps'].median:9.0f} GETs/s  p50 {format_value(fig['p50'].median, 'ns'):>9}  "
            f"p99 {format_value(fig['p99'].median, 'ns'):>9}  CPU/GET {format_value(fig['cpu'].median, 'ns'):>9}  "
            f"(GETs/s p25-p75 {fig['rps'].p25:.0f}-{fig['rps'].p75:.0f})"
        )
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__":
    standalone(run)
