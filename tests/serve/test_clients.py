"""Non-Python clients get tokens: curl, and a Node.js script using the global fetch."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import resource_ok
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]

NODE_CLIENT = """
const [base, key, grant] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${key}` };
const token = await fetch(`${base}/v1/grants/${grant}/token?min_valid=60`, { headers });
const body = await token.json();
const refused = await fetch(`${base}/v1/grants/${grant}/token`);
const problem = await refused.json();
console.log(JSON.stringify({
  status: token.status, body, refusedStatus: refused.status,
  refusedType: refused.headers.get("content-type"), problemCode: problem.code,
}));
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_curl_gets_a_token(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = grant_on_sim
    key = make_key(store_url, "curl", grants="acme-1")
    server = serve_process(store_url)
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail-with-body", "-H", f"Authorization: Bearer {key}",
                           f"{server.url}/v1/grants/acme-1/token"], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert resource_ok(sim, body["access_token"]) and body["token_type"] == "Bearer"
    refused = subprocess.run(["curl", "--silent", "-o", "/dev/null", "-w", "%{http_code}",
                              f"{server.url}/v1/grants/acme-1/token"], capture_output=True, text=True, timeout=60,
                             check=False)  # fmt: skip
    assert refused.stdout == "401"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (.ci/run installs it)")
def test_node_fetch_gets_a_token(grant_on_sim: tuple[str, object], serve_process: Start, tmp_path: Path) -> None:
    store_url, sim = grant_on_sim
    key = make_key(store_url, "node", grants="acme-*")
    server = serve_process(store_url)
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT)
    done = subprocess.run(["node", str(script), server.url, key, "acme-1"], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == 200 and resource_ok(sim, result["body"]["access_token"])
    assert result["refusedStatus"] == 401 and result["problemCode"] == "unauthorized"
    assert result["refusedType"] == "application/problem+json"
