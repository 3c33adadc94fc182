"""Pytest plugin: django-oauth-toolkit (DOT) as a real authorization server on 127.0.0.1.

Registered in tests/conftest.py (``pytest_plugins``). `dot_server` is a session-scoped factory: call it with
the settings a test needs (rotation, grace period, reuse protection, access-token lifetime) and it returns a
running `DotServer` with those settings, started once per distinct configuration and stopped (by pid) at the
end of the session. Each server is the project in tests/dot/ under waitress, with its own SQLite database
copied from one migrated at the start of the session.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import Provider, RotationMode, Secret

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class DotConfig:
    """The OAUTH2_PROVIDER settings a test server runs with (the rest are in tests/dot/settings.py)."""

    rotate: bool = True  # ROTATE_REFRESH_TOKEN
    grace: int = 0  # REFRESH_TOKEN_GRACE_PERIOD_SECONDS
    reuse_protection: bool = False  # REFRESH_TOKEN_REUSE_PROTECTION: a reused spent token revokes its family
    access_ttl: int = 3600  # ACCESS_TOKEN_EXPIRE_SECONDS
    #: REFRESH_TOKEN_EXPIRE_SECONDS: an unused refresh token dies this long after its access token expired.
    refresh_ttl: int | None = None

    @property
    def refresh_idle_ttl(self) -> float | None:
        """How long after a refresh DOT lets the new refresh token live unused (access lifetime + refresh_ttl)."""
        return None if self.refresh_ttl is None else float(self.access_ttl + self.refresh_ttl)

    def oauth2_settings(self) -> dict[str, object]:
        return {
            "ROTATE_REFRESH_TOKEN": self.rotate,
            "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": self.grace,
            "REFRESH_TOKEN_REUSE_PROTECTION": self.reuse_protection,
            "ACCESS_TOKEN_EXPIRE_SECONDS": self.access_ttl,
            "REFRESH_TOKEN_EXPIRE_SECONDS": self.refresh_ttl,
        }


@dataclass(frozen=True)
class DotAccounts:
    """The resource owner and the confidential client created in every server's database."""

    username: str
    password: str
    client_id: str
    client_secret: str


class DotServer:
    """One running DOT server. Tests read what DOT saw from its token-call log and its database."""

    def __init__(self, config: DotConfig, accounts: DotAccounts, directory: Path) -> None:
        self.config = config
        self.accounts = accounts
        self.directory = directory
        self.db_path = directory / "db.sqlite3"
        self.log_path = directory / "token-calls.jsonl"
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        port_file = self.directory / "port"
        env = {**_child_env(self.directory), "GK_DOT_OAUTH2": json.dumps(self.config.oauth2_settings())}
        with (self.directory / "server.log").open("ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.dot.serve", str(port_file)],
                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            self._check_running()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"DOT server did not bind within {START_TIMEOUT:.0f}s; see {self.directory}")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        while True:
            self._check_running()
            try:
                if httpx.get(self.url("/healthz/"), timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"DOT server did not answer within {START_TIMEOUT:.0f}s; see {self.directory}")
            time.sleep(0.05)

    def _check_running(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            log = (self.directory / "server.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"DOT server exited with {self._process.returncode}:\n{log}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    # -- addresses and clients ------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def token_url(self) -> str:
        return self.url("/o/token/")

    @property
    def revoke_url(self) -> str:
        return self.url("/o/revoke_token/")

    @property
    def authorize_url(self) -> str:
        return self.url("/o/authorize/")

    @property
    def device_authorization_url(self) -> str:
        return self.url("/o/device-authorization/")

    @property
    def device_client_id(self) -> str:
        """The client allowed the device grant (DOT allows one grant type per client; same secret)."""
        return self.accounts.client_id + "-device"

    @property
    def resource_url(self) -> str:
        return self.url("/api/resource/")

    @property
    def client_auth(self) -> tuple[str, str]:
        return (self.accounts.client_id, self.accounts.client_secret)

    def provider(self, name: str = "dot", **options: object) -> Provider:
        """A grantkeeper provider for this server, telling grantkeeper the server's real rotation, grace and
        refresh-token idle lifetime."""
        settings: dict[str, Any] = {
            "token_url": self.token_url,
            "client_id": self.accounts.client_id,
            "client_secret": Secret(self.accounts.client_secret),
            "rotation": RotationMode.ALWAYS if self.config.rotate else RotationMode.NEVER,
            "reuse_grace": float(self.config.grace),
            "refresh_idle_ttl": self.config.refresh_idle_ttl,
        }
        return Provider(name=name, **{**settings, **options})

    def device_provider(self, name: str = "dot", **options: object) -> Provider:
        """A grantkeeper provider for this server's device-grant client."""
        return self.provider(name, client_id=self.device_client_id,
                             device_authorization_url=self.device_authorization_url, **options)  # fmt: skip

    def approve_device(self, user_code: str, *, allow: bool = True) -> httpx.Response:
        """The person's part of the device flow, through DOT's real pages with httpx as the browser: open
        /o/device/, log in, enter `user_code`, press Accept (or Deny). Returns DOT's grant status page."""
        from tests.dot_browser import enter_user_code  # dot_browser imports this module

        with httpx.Client(timeout=30, follow_redirects=False) as browser:
            return enter_user_code(browser, self, self.url("/o/device/"), user_code, allow=allow)

    def refresh_directly(self, refresh_token: str) -> httpx.Response:
        """Send a refresh token to /o/token/ outside grantkeeper (a stale copy, or a check that one is dead)."""
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return httpx.post(self.token_url, data=data, auth=self.client_auth, timeout=30)

    def resource_status(self, access_token: str) -> tuple[int, str | None]:
        """(HTTP status, reason) from the DOT-protected resource; reason says why a token was refused."""
        response = httpx.get(self.resource_url, headers={"Authorization": f"Bearer {access_token}"}, timeout=30)
        return response.status_code, response.json().get("reason")

    # -- what DOT saw ---------------------------------------------------------------------------------------

    def log_mark(self) -> int:
        """A position in the token-call log; `token_calls(since=mark)` returns only the calls after it."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def token_calls(self, since: int = 0, *, grant_type: str | None = None) -> list[dict[str, Any]]:
        """The calls to /o/token/ and /o/revoke_token/ logged after `since`: path, grant_type, status, error."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as log:
            log.seek(since)
            calls = [json.loads(line) for line in log.read().splitlines() if line]
        return [c for c in calls if grant_type is None or c["grant_type"] == grant_type]

    def family(self, refresh_token: str) -> list[dict[str, object]]:
        """Every refresh token DOT issued in the rotation family of `refresh_token`, oldest first: whether each
        is revoked and whether it still has its access token. Read from DOT's database (read-only)."""
        checksum = hashlib.sha256(refresh_token.encode()).hexdigest()
        uri = f"file:{self.db_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            rows = db.execute(
                "SELECT id, revoked IS NOT NULL, access_token_id IS NOT NULL FROM oauth2_provider_refreshtoken "
                "WHERE token_family = (SELECT token_family FROM oauth2_provider_refreshtoken "
                "WHERE token_checksum = ? LIMIT 1) ORDER BY id",
                (checksum,),
            ).fetchall()
        return [{"id": r[0], "revoked": bool(r[1]), "has_access_token": bool(r[2])} for r in rows]


def _child_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRANTKEEPER_", "DJANGO_"))}
    env.update(GK_DOT_DIR=str(directory), DJANGO_SETTINGS_MODULE="tests.dot.settings", PYTHONPATH=str(REPO))
    return env


def bootstrap(directory: Path) -> DotAccounts:
    """Migrate a database in `directory` and create the accounts, with fresh random credentials."""
    accounts = DotAccounts(
        username="alice",
        password=secrets.token_urlsafe(16),
        client_id=secrets.token_hex(16),
        client_secret=secrets.token_hex(32),
    )
    subprocess.run(
        [sys.executable, "-m", "tests.dot.bootstrap", *asdict(accounts).values()],
        cwd=REPO, env=_child_env(directory), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return accounts


DotFactory = Callable[..., DotServer]


@pytest.fixture(scope="session")
def dot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DotFactory]:
    """``dot_server(grace=30)`` -> a running DOT server with those `DotConfig` settings (started on first use)."""
    template = tmp_path_factory.mktemp("dot-template")
    accounts: DotAccounts | None = None
    servers: dict[DotConfig, DotServer] = {}

    def factory(**settings: object) -> DotServer:
        nonlocal accounts
        config = DotConfig(**settings)  # type: ignore[arg-type]
        if config not in servers:
            if accounts is None:
                accounts = bootstrap(template)
            directory = tmp_path_factory.mktemp("dot")
            shutil.copy(template / "db.sqlite3", directory / "db.sqlite3")
            server = DotServer(config, accounts, directory)
            server.start()
            servers[config] = server
        return servers[config]

    yield factory
    for server in servers.values():
        server.stop()
