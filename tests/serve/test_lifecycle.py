"""What the broker needs around it: the optional extra, the readiness hook, the JSON log lines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import AsyncKeeper
from grantkeeper.serve.broker import Heartbeat
from grantkeeper.serve.config import ServeConfig
from grantkeeper.serve.runner import build_broker
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]

HIDE_EXTRA = """
import sys
for name in ("fastapi", "uvicorn", "prometheus_client", "structlog"):
    sys.modules[name] = None  # as if the serve extra were not installed
from grantkeeper.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_extra_serve_names_it_and_the_rest_works(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path}/base.db"
    done = subprocess.run([sys.executable, "-c", HIDE_EXTRA, "--store", store, "serve"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 3
    assert "pip install 'grantkeeper[serve]'" in done.stderr and "fastapi" in done.stderr
    listed = subprocess.run([sys.executable, "-c", HIDE_EXTRA, "--help"], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert listed.returncode == 0 and "serve" in listed.stdout


@pytest.mark.anyio
async def test_readiness_fails_when_a_registered_heartbeat_goes_stale(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/ready.db"
    keeper = await AsyncKeeper.open(url)
    broker = build_broker(keeper, ServeConfig(), store_url=url)
    seen = []
    try:
        ready, checks = await broker.readiness()
        seen.append((ready, {n for n, c in checks.items() if not c["ok"]}))
        heartbeat = Heartbeat(max_age=0.2)
        broker.add_check("scheduler", heartbeat.check)
        ready, checks = await broker.readiness()
        seen.append((ready, {n for n, c in checks.items() if not c["ok"]}))
        await asyncio.sleep(0.4)  # no beat for longer than max_age
        ready, checks = await broker.readiness()
        seen.append((ready, {n for n, c in checks.items() if not c["ok"]}))
        heartbeat.beat()
        ready, checks = await broker.readiness()
        seen.append((ready, {n for n, c in checks.items() if not c["ok"]}))
        broker.draining = True
        ready, checks = await broker.readiness()
        seen.append((ready, {n for n, c in checks.items() if not c["ok"]}))
    finally:
        await keeper.aclose()
    assert seen == [(True, set()), (True, set()), (False, {"scheduler"}), (True, set()), (False, {"shutdown"})]


def test_logs_are_json_lines_without_credentials(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, _ = grant_on_sim
    key = make_key(store_url, "ci")
    server = serve_process(store_url)
    with server.client(key) as http:
        token = http.get("/v1/grants/acme-1/token", params={"min_valid": 5}).json()["access_token"]
    server.terminate()
    events = [json.loads(line) for line in server.lines]  # every line is one JSON object
    requests = [e for e in events if e["event"] == "request"]
    assert requests == [{"event": "request", "method": "GET", "path": "/v1/grants/acme-1/token",
                         "route": "/v1/grants/{name}/token", "status": 200, "api_key": "ci", "outcome": None,
                         "ms": requests[0]["ms"], "level": "info", "timestamp": requests[0]["timestamp"]}]  # fmt: skip
    assert {"listening", "stopping", "stopped"} <= {e["event"] for e in events}
    text = server.log_text()
    assert token[:8] not in text and key.split("_", 2)[2][:8] not in text and "min_valid" not in text


def test_served_connections_have_nagle_off() -> None:
    """Each answer is written in pieces: with Nagle's algorithm on, the last piece waits for the client's delayed
    ACK (~40 ms per request on Linux). asyncio turns it off only on sockets that say they are TCP."""
    import socket

    from grantkeeper.serve.runner import _tcp_socket

    async def scenario() -> int:
        nodelay: list[int] = []

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = _tcp_socket("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        while not nodelay:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay[0]

    assert asyncio.run(scenario()) != 0
