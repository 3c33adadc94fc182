"""``connect`` against django-oauth-toolkit (DOT), an independent authorization server: the device flow (RFC 8628)
end to end through the CLI, with a scripted browser (httpx) entering the printed user code on DOT's real pages
and in a pseudo-terminal as a person would; a denial; and both flows keeping the access token of the token
response, so the first token read costs DOT no request. No output ever holds a token, a device code or the
client secret."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pexpect
import pytest

from grantkeeper import Keeper, UnknownGrant
from grantkeeper._exceptions import ConsentDenied
from grantkeeper.consent import connect, connect_device
from grantkeeper.consent.device import DEVICE_CODE_GRANT, DeviceAuthorization
from tests.consent.test_connect import Browser, through_dot
from tests.dot_browser import enter_user_code
from tests.dot_server import REPO, DotFactory, DotServer


def device_codes(server: DotServer) -> list[str]:
    """Every device code DOT issued (read from its database), for leak checks."""
    with closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)) as db:
        return [row[0] for row in db.execute("SELECT device_code FROM oauth2_provider_devicegrant")]


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}


def add_device_provider(url: str, server: DotServer) -> None:
    """`provider add` with the device authorization URL (DOT's metadata does not list the endpoint)."""
    added = subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", url, "provider", "add", "dot", "--token-url",
         server.token_url, "--client-id", server.device_client_id, "--client-secret-stdin", "--rotation", "always",
         "--device-authorization-url", server.device_authorization_url],
        cwd=REPO, input=server.accounts.client_secret + "\n", capture_output=True, text=True, timeout=120,
        check=False, env=cli_env(),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def test_connect_device_through_the_cli(tmp_path: Path, dot_server: DotFactory) -> None:
    """`connect --device --no-browser` prints DOT's verification URL and user code; the person opens the URL,
    logs in and enters the code; grantkeeper, polling meanwhile (authorization_pending), stores the grant with
    DOT's access token, which `access_token` returns without a refresh; a refresh then rotates at DOT."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    add_device_provider(url, server)
    mark = server.log_mark()
    with subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "--store", url, "connect", "g", "--provider", "dot", "--device",
         "--no-browser", "--scope", "read", "--scope", "write", "--timeout", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    ) as process:  # fmt: skip
        assert process.stderr is not None
        printed: list[str] = []
        while not any(line.startswith("    code: ") for line in printed):
            line = process.stderr.readline()
            assert line, f"connect ended before printing the code: {''.join(printed)}"
            printed.append(line)
        user_code = next(line.split("code: ", 1)[1].strip() for line in printed if line.startswith("    code: "))
        verification_uri = next(line.strip() for line in printed if line.startswith("    http"))
        assert verification_uri == server.url("/o/device/")
        with httpx.Client(timeout=30, follow_redirects=False) as browser:
            status_page = enter_user_code(browser, server, verification_uri, user_code)
        assert status_page.status_code == 200
        # Read the rest through the same text streams: communicate() would bypass what readline() buffered.
        assert process.stdout is not None
        rest, stdout = process.stderr.read(), process.stdout.read()
        process.wait(timeout=120)
        stderr = "".join(printed) + rest
    assert process.returncode == 0, stderr
    assert stdout.startswith("grant g connected: provider dot, scopes read write, refresh token ")
    assert "Waiting up to 120s for the approval (polling every 1s" in stderr
    assert f"    {server.url('/o/device/')}?user_code={user_code}\n" in stderr  # verification_uri_complete
    polls = server.token_calls(mark, grant_type=DEVICE_CODE_GRANT)
    assert polls[-1]["status"] == 200 and all(p["error"] == "authorization_pending" for p in polls[:-1])

    with Keeper.open(url) as keeper:
        grant = keeper.store.get_grant("g")
        assert grant.generation == 1 and grant.scopes == ("read", "write") and grant.refresh_token is not None
        first_refresh = grant.refresh_token.reveal()
        after = server.log_mark()
        exchanged = keeper.access_token("g")
        assert server.token_calls(after) == []  # DOT's access token from the device flow was kept
        assert server.resource_status(exchanged) == (200, None)
        refreshed = keeper.refresh("g", force=True)
        assert refreshed.generation == 2 and refreshed.access_token is not None
        access = refreshed.access_token.reveal()
    assert server.resource_status(access) == (200, None)
    assert server.refresh_directly(first_refresh).json()["error"] == "invalid_grant"  # rotated: the old one is dead
    for secret in (first_refresh, exchanged, access, server.accounts.client_secret, *device_codes(server)):
        assert secret not in stdout + stderr


def test_connect_device_in_a_terminal(tmp_path: Path, dot_server: DotFactory) -> None:
    """In a pseudo-terminal: the person reads the user code off the screen, approves it at DOT, and sees the
    success line."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    add_device_provider(url, server)
    child = pexpect.spawn(
        sys.executable, ["-m", "grantkeeper", "--store", url, "connect", "g", "--provider", "dot", "--device",
                         "--no-browser"],
        cwd=str(REPO), env=cli_env(), encoding="utf-8", timeout=120,
    )  # fmt: skip
    child.logfile_read = screen = io.StringIO()
    try:
        child.expect(r"code: ([0-9A-Z]+)\r?\n")
        user_code = child.match.group(1)
        child.expect("Waiting up to")
        assert server.approve_device(user_code).status_code == 200
        child.expect(r"grant g connected: provider dot, scopes [a-z ]+, refresh token \S+")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    with Keeper.open(url) as keeper:
        token = keeper.store.get_grant("g").refresh_token
        assert token is not None
        access = keeper.access_token("g")
    for secret in (token.reveal(), access, server.accounts.client_secret, *device_codes(server)):
        assert secret not in screen.getvalue()


def test_denied_at_dot(tmp_path: Path, dot_server: DotFactory) -> None:
    """Pressing Deny on DOT's confirmation page: the next poll is access_denied, nothing is stored."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(server.device_provider())

        def deny(authorization: DeviceAuthorization) -> None:
            assert server.approve_device(authorization.user_code, allow=False).status_code == 200

        with pytest.raises(ConsentDenied, match="consent was refused") as caught:
            connect_device(keeper, "g", provider="dot", show=deny)
        assert caught.value.oauth_error == "access_denied"
        with pytest.raises(UnknownGrant):
            keeper.store.get_grant("g")


def test_code_flow_keeps_the_exchanged_access_token(tmp_path: Path, dot_server: DotFactory) -> None:
    """After `connect` (authorization code flow) DOT saw exactly one token request, the code exchange, and
    `access_token` returns that exchange's access token, which DOT accepts."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(server.provider(authorization_url=server.authorize_url))
        mark = server.log_mark()
        browser = Browser(through_dot(server))
        connect(keeper, "g", provider="dot", scopes=("read",), timeout=120, show=browser.show)
        assert browser.join().status_code == 200
        access = keeper.access_token("g")
        assert [(c["grant_type"], c["status"]) for c in server.token_calls(mark)] == [("authorization_code", 200)]
    assert server.resource_status(access) == (200, None)
