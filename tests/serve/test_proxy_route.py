"""``/v1/proxy/{name}/{path}`` in a real ``grantkeeper serve``: curl and Node.js reach the provider's API through it
without ever holding a token; the key needs the ``proxy`` scope and the grant; a provider without an API base URL
is a 409 problem; every proxied request is in the audit trail with the token's fingerprint, never the token."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper.stores import open_store
from tests.serve.conftest import ServeProcess, make_key
from tests.system.test_canary import find_leaks

Start = Callable[..., ServeProcess]

NODE_CLIENT = """
const [base, key, grant] = process.argv.slice(2);
const answer = await fetch(`${base}/v1/proxy/${grant}/resource`, { headers: { Authorization: `Bearer ${key}` } });
console.log(JSON.stringify({ status: answer.status, body: await answer.text() }));
"""


def _with_api(store_url: str, sim: object) -> None:
    store = open_store(store_url)
    try:
        provider = store.get_provider("sim")
        store.put_provider(dataclasses.replace(provider, api_base_url=sim.base_url), now=0.0)  # type: ignore[attr-defined]
    finally:
        store.close()


def _leaks(name: str, text: str, sim: object) -> list[str]:
    return find_leaks([(name, text)], set(sim.issued_tokens()))  # type: ignore[attr-defined]


@pytest.fixture
def proxied(grant_on_sim: tuple[str, object]) -> tuple[str, object]:
    store_url, sim = grant_on_sim
    _with_api(store_url, sim)
    return store_url, sim


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_curl_reaches_the_api_through_the_proxy(proxied: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = proxied
    key = make_key(store_url, "curl", grants="acme-1", scopes="proxy")
    server = serve_process(store_url)
    done = subprocess.run(["curl", "--silent", "--show-error", "--include", "-H", f"Authorization: Bearer {key}",
                           f"{server.url}/v1/proxy/acme-1/resource?x=1"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 200") and '"ok": true' in done.stdout.replace('"ok":true', '"ok": true')
    assert not _leaks("output", done.stdout, sim)
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (.ci/run installs it)")
def test_node_fetch_reaches_the_api_through_the_proxy(
    proxied: tuple[str, object], serve_process: Start, tmp_path: Path
) -> None:
    store_url, sim = proxied
    key = make_key(store_url, "node", grants="acme-*", scopes="proxy")
    server = serve_process(store_url)
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT)
    done = subprocess.run(["node", str(script), server.url, key, "acme-1"], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == 200 and json.loads(result["body"]) == {"ok": True}
    assert not _leaks("output", done.stdout, sim)


def test_the_proxy_needs_its_scope_and_the_grant(proxied: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = proxied
    token_only = make_key(store_url, "token-only", grants="acme-1", scopes="token")
    elsewhere = make_key(store_url, "elsewhere", grants="billing", scopes="proxy")
    server = serve_process(store_url)
    with server.client(token_only) as http:
        assert http.get("/v1/proxy/acme-1/resource").status_code == 403
    with server.client(elsewhere) as http:
        assert http.get("/v1/proxy/acme-1/resource").status_code == 403
    with server.client() as http:
        assert http.get("/v1/proxy/acme-1/resource").status_code == 401
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]


def test_a_provider_without_an_api_base_url_is_a_409_problem(
    grant_on_sim: tuple[str, object], serve_process: Start
) -> None:
    store_url, sim = grant_on_sim
    key = make_key(store_url, "app", grants="acme-1", scopes="proxy")
    server = serve_process(store_url)
    with server.client(key) as http:
        answer = http.get("/v1/proxy/acme-1/resource")
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "proxy_not_configured" and "--api-base-url" in problem["detail"]
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]


def test_proxied_requests_are_audited_with_fingerprints_only(proxied: tuple[str, object], serve_process: Start) -> None:
    store_url, sim = proxied
    key = make_key(store_url, "app", grants="acme-1", scopes="proxy,token")
    server = serve_process(store_url, env={"GRANTKEEPER_SERVE_MAX_BODY": "1024"})
    with server.client(key) as http:
        assert http.get("/v1/proxy/acme-1/resource").status_code == 200
        # Over the API's body cap: proxied bodies stream under the proxy's own limits instead.
        assert http.post("/v1/proxy/acme-1/resource", content=b"x" * 32768).status_code == 200
        assert http.post("/v1/grants/acme-1/rejected", content=b"x" * 32768).status_code == 413
        token = http.get("/v1/grants/acme-1/token").json()
    server.terminate()
    store = open_store(store_url)
    try:
        trail = [e for e in store.list_audit(grant="acme-1") if e.action == "proxy"]
    finally:
        store.close()
    assert sorted((e.status, e.detail, e.fingerprint) for e in trail) == [
        (200, "GET 127.0.0.1", token["fingerprint"]), (200, "POST 127.0.0.1", token["fingerprint"])
    ]  # fmt: skip
    assert not _leaks("log", server.log_text(), sim)


def test_a_changed_api_base_url_is_followed_by_the_next_request(proxied: tuple[str, object],
                                                               serve_process: Start) -> None:  # fmt: skip
    """The proxy keeps a grant's provider between requests (`ProxyTargets`), but never past a change to it."""
    store_url, sim = proxied
    key = make_key(store_url, "app", grants="acme-1", scopes="proxy")
    server = serve_process(store_url)
    store = open_store(store_url)
    try:
        with server.client(key) as http:
            assert [http.get("/v1/proxy/acme-1/resource").status_code for _ in range(3)] == [200] * 3
            moved = dataclasses.replace(store.get_provider("sim"), api_base_url=sim.base_url + "/moved")  # type: ignore[attr-defined]
            store.put_provider(moved, now=1.0)
            assert http.get("/v1/proxy/acme-1/resource").status_code == 404  # the simulator has no /moved/resource
            store.put_provider(dataclasses.replace(moved, api_base_url=None), now=2.0)
            assert http.get("/v1/proxy/acme-1/resource").json()["code"] == "proxy_not_configured"
            store.put_provider(dataclasses.replace(moved, api_base_url=sim.base_url), now=3.0)  # type: ignore[attr-defined]
            assert http.get("/v1/proxy/acme-1/resource").status_code == 200
    finally:
        store.close()
