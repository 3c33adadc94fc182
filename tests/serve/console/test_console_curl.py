"""A non-Python client signs in to the console: curl with a cookie jar, as a script or a monitoring probe would."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serve.conftest import ServeProcess, make_key
from tests.serve.console.helpers import csrf_of

Start = Callable[..., ServeProcess]


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "--silent", "--show-error", *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_curl_signs_in_reads_the_grants_and_signs_out(grant_on_sim: tuple[str, object], serve_process: Start,
                                                      tmp_path: Path) -> None:  # fmt: skip
    store_url, _ = grant_on_sim
    key = make_key(store_url, "curl", grants="acme-*", scopes="ui")
    server = serve_process(store_url)
    jar = str(tmp_path / "cookies.txt")
    form = _curl("-c", jar, f"{server.url}/ui/login")
    assert form.returncode == 0, form.stderr
    # The key goes in the body, from a file: never in curl's arguments.
    body = tmp_path / "form.txt"
    body.write_text(f"csrf={csrf_of(form.stdout)}&key={key}")
    signed_in = _curl("-b", jar, "-c", jar, "-D", "-", "-o", "/dev/null", "--data-binary", f"@{body}",
                      f"{server.url}/ui/login")  # fmt: skip
    assert signed_in.returncode == 0, signed_in.stderr
    head = signed_in.stdout.lower()
    assert head.startswith("http/1.1 303") and "location: /ui/grants" in head
    assert "set-cookie: gk_console=" in head and "httponly" in head and "samesite=strict" in head
    grants = _curl("-b", jar, "-w", "\n%{http_code}", f"{server.url}/ui/grants")
    page, status = grants.stdout.rsplit("\n", 1)
    assert status == "200" and 'data-grant="acme-1"' in page
    signed_out = _curl("-b", jar, "-c", jar, "-o", "/dev/null", "-w", "%{http_code}", "--data",
                       f"csrf={csrf_of(page)}", f"{server.url}/ui/logout")  # fmt: skip
    assert signed_out.stdout == "303"
    after = _curl("-b", jar, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"{server.url}/ui/grants")
    assert after.stdout == f"303 {server.url}/ui/login"
