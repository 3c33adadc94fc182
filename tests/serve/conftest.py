"""Fixtures for `grantkeeper serve`: real `grantkeeper serve` processes on 127.0.0.1, API keys, HTTP clients.

`serve_process` starts ``python -m grantkeeper ... serve --port 0`` (a subprocess, so SIGTERM and the
signal handling are real), reads the ``listening`` line of its JSON log for the URL, keeps every log line for the
canary scans, and stops it by pid (SIGTERM, then SIGKILL) at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from grantkeeper.serve.apikeys import new_key
from grantkeeper.stores import open_store
from tests.helpers import setup_grant

START_TIMEOUT = 60.0


@dataclass
class ServeProcess:
    """One running ``grantkeeper serve``."""

    proc: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def events(self) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"unparsed": line})
        return found

    def wait_for_event(self, name: str, timeout: float = START_TIMEOUT) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events():
                    if event.get("event") == name:
                        return event
                if self.proc.poll() is not None and (self._reader is None or not self._reader.is_alive()):
                    raise AssertionError(f"serve exited ({self.proc.returncode}) before {name!r}: {self.lines[-20:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {name!r} log event within {timeout} s: {self.lines[-20:]}")
                self._changed.wait(min(left, 0.2))

    def client(self, key: str | None = None, **options: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, trust_env=False, **options)  # type: ignore[arg-type]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def log_text(self) -> str:
        return "\n".join(self.lines)


def serve_command(store_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "grantkeeper", "--store", store_url, "serve", *args]


def launch(argv: list[str], *, env: dict[str, str] | None = None, wait: bool = True) -> ServeProcess:
    """Start `argv` (a ``grantkeeper ... serve`` command line) with `env` over this process's environment; with
    `wait`, return once it logs ``listening`` (its URL in `ServeProcess.url`)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})  # fmt: skip
    server = ServeProcess(proc)
    server.start_reading()
    if wait:
        try:
            server.url = str(server.wait_for_event("listening")["url"])
        except AssertionError:
            server.terminate()
            raise
    return server


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(store_url: str, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServeProcess:
        if "--port" not in args:
            args = (*args, "--port", "0")
        server = launch(serve_command(store_url, *args), env=env, wait=wait)
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate()


def metric_sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")] if line.startswith(name + "{") else ""))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def make_key(store_url: str, name: str, *, grants: str = "*", scopes: str = "token,read",
             lifetime: float | None = None) -> str:  # fmt: skip
    """Create API key `name` directly in the store (the CLI path has its own test); returns the key."""
    made = new_key(name, grants=grants, scopes=scopes, now=time.time(), lifetime=lifetime)
    store = open_store(store_url)
    try:
        store.create_api_key(made.record, key=made.key)
    finally:
        store.close()
    return made.key


@pytest.fixture
def serve_store(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/serve.db"


@pytest.fixture
def grant_on_sim(serve_store: str, make_sim: Callable[..., object]) -> tuple[str, object]:
    """A store with grant "acme-1" on a fresh simulator (rotating refresh tokens); (store URL, simulator)."""
    sim = make_sim()
    setup_grant(serve_store, sim, grant="acme-1")
    return serve_store, sim


@dataclass
class Hooks:
    """What a webhook receiver got: each delivery's body and its ``Grantkeeper-Signature`` header, in order."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Hooks]:
    """A webhook receiver on 127.0.0.1 that answers 204 to every delivery."""
    hooks = Hooks("")

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hooks.signatures.append(self.headers.get("Grantkeeper-Signature", ""))
            hooks.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hooks.url = f"http://127.0.0.1:{server.server_port}/hook"
    yield hooks
    server.shutdown()
    server.server_close()
