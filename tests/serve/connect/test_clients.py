"""Hosted connect from a non-Python client: curl asks for the URL, then plays the end user's browser on the
broker's side (its cookie jar carries the session's cookie from the button to the callback), while the person's
part at DOT (log in, Authorize) goes through DOT's real pages (tests/dot_browser.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.dot_browser import consent, form_fields
from tests.serve.connect.conftest import Hosted

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)"),
]


def curl(hosted: Hosted, what: str, *args: str) -> str:
    """curl's output (status line, headers and body with --include), kept for the leak scan."""
    done = subprocess.run(["curl", "--silent", "--show-error", "--include", *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosted.captures.append((what, done.stdout))
    return done.stdout


def test_curl_creates_a_session_and_completes_the_callback(hosted: Hosted, tmp_path: Path) -> None:
    jar = str(tmp_path / "cookies.txt")
    base = hosted.server.url
    body = json.dumps({"grant": "acme-curl", "provider": "dot", "scopes": ["read"]})
    created = curl(hosted, "create", "-H", f"Authorization: Bearer {hosted.key}", "-H",
                   "Content-Type: application/json", "--data", body, f"{base}/v1/connect-sessions")  # fmt: skip
    assert created.startswith("HTTP/1.1 201")
    url = json.loads(created.split("\n\n", 1)[1])["url"]

    page = curl(hosted, "start page", "-c", jar, "-b", jar, url)
    token = form_fields(page.split("\n\n", 1)[1], "connect-form")["token"]
    opened = curl(hosted, "continue", "-c", jar, "-b", jar, "--data-urlencode", f"token={token}", f"{base}/connect")
    assert opened.startswith("HTTP/1.1 303")
    location = next(line.split(": ", 1)[1] for line in opened.splitlines() if line.lower().startswith("location:"))
    assert "gk_connect_" in Path(jar).read_text()

    with httpx.Client(timeout=60, follow_redirects=False, trust_env=False) as person:
        callback = consent(person, hosted.dot, location)
    hosted.remember_code(callback)
    done = curl(hosted, "callback", "-c", jar, "-b", jar, callback)
    assert done.startswith("HTTP/1.1 200") and "dot is connected" in done
    again = curl(hosted, "callback again", "-b", jar, callback)
    assert again.startswith("HTTP/1.1 410") and "connect_session_used" in again
    with hosted.server.client(hosted.key) as http:
        assert http.post("/v1/connect-sessions", json={"grant": "acme-curl", "provider": "dot"}).status_code == 409
    assert [e["kind"] for e in hosted.events(1)] == ["connected"]
    assert not hosted.leaks()
