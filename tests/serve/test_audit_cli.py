"""`grantkeeper audit` reads the trail `serve` writes: who got which grant's token, filtered by grant and by key,
as a table and as JSON, with fingerprints only (a real serve process, the real CLI in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]


def _audit(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", store_url, "audit", *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_audit_shows_who_got_which_token(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, _ = grant_on_sim
    key = make_key(store_url, "billing-app", grants="acme-*", scopes="token")
    other = make_key(store_url, "other-app", grants="other", scopes="token")
    server = serve_process(store_url)
    with server.client(key) as http, server.client(other) as intruder:
        token = http.get("/v1/grants/acme-1/token").json()
        assert intruder.get("/v1/grants/acme-1/token").status_code == 403
    server.terminate()  # the trail is flushed at shutdown

    every = json.loads(_audit(store_url, "--json").stdout)
    assert {(e["api_key"], e["action"], e["grant"], e["status"]) for e in every} == {
        ("billing-app", "token", "acme-1", 200), ("other-app", "token", "acme-1", 403),
    }  # fmt: skip
    [mine] = json.loads(_audit(store_url, "--json", "--key", "billing-app").stdout)
    assert (mine["fingerprint"], mine["generation"]) == (token["fingerprint"], token["generation"])
    [refused] = json.loads(_audit(store_url, "--json", "--grant", "acme-1", "--key", "other-app").stdout)
    assert (refused["status"], refused["detail"], refused["fingerprint"]) == (403, "forbidden", None)
    assert json.loads(_audit(store_url, "--json", "--grant", "nobody").stdout) == []

    table = _audit(store_url, "--grant", "acme-1", "--limit", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["AT", "KEY", "ACTION", "GRANT", "STATUS"] and len(lines) == 2
    assert "other-app" in lines[1] and "403" in lines[1]  # newest first
    empty = _audit(store_url, "--key", "nobody")
    assert empty.returncode == 0 and "no audit entries for key nobody" in empty.stdout
    everything = "".join(_audit(store_url, *a).stdout for a in ((), ("--json",)))
    assert token["access_token"] not in everything and token["access_token"][:8] not in everything
