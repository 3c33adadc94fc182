"""Operating the broker: metrics, the audit trail and `grantkeeper audit`, listeners (TLS refusal, Unix socket),
config, shutdown, apikey CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import Keeper
from grantkeeper._exceptions import ConfigurationError
from grantkeeper.serve.config import load_config
from grantkeeper.stores import open_store
from grantkeeper.testing import Delay
from tests.helpers import provider_for, setup_grant
from tests.serve.conftest import ServeProcess, launch, make_key, metric_sample, serve_command

Start = Callable[..., ServeProcess]


def test_metrics_count_refreshes_requests_and_grants_without_naming_grants(
    serve_store: str, make_sim: Callable[..., object], serve_process: Start
) -> None:
    sim = make_sim()
    setup_grant(serve_store, sim, grant="secret-project-grant")
    with Keeper.open(serve_store) as keeper:  # a consent that ends in 3 days, whatever refreshes do
        keeper.add_provider(dataclasses.replace(provider_for(sim, name="short"), refresh_absolute_ttl=3 * 86400.0))
        keeper.import_grant("short-lived", provider="short", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    key = make_key(serve_store, "scraper", scopes="token,refresh,metrics")
    server = serve_process(serve_store)
    with server.client(key) as http:
        token = http.get("/v1/grants/secret-project-grant/token").json()
        http.get("/v1/grants/secret-project-grant/token")
        http.post("/v1/grants/secret-project-grant/refresh")
        http.get("/v1/grants/nope/token")
        text = http.get("/metrics").text
    assert metric_sample(text, "grantkeeper_refreshes_total", provider="sim", outcome="committed") == 2
    assert metric_sample(text, "grantkeeper_refresh_duration_seconds_count", provider="sim") == 2
    assert metric_sample(text, "grantkeeper_token_requests_total", outcome="served") == 2
    assert metric_sample(text, "grantkeeper_token_requests_total", outcome="unknown_grant") == 1
    assert metric_sample(text, "grantkeeper_grants", state="active") == 2
    assert metric_sample(text, "grantkeeper_grants_refresh_ending_soon") == 1
    assert metric_sample(text, "grantkeeper_api_requests_total", api_key="scraper", route="/v1/grants/{name}/token",
                   status="200") == 2  # fmt: skip
    assert metric_sample(text, "grantkeeper_webhook_deliveries_total", outcome="delivered") == 0
    assert "secret-project-grant" not in text and token["fingerprint"] not in text
    assert token["access_token"][:8] not in text


def test_the_audit_trail_records_who_got_which_token(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, _ = grant_on_sim
    key = make_key(store_url, "billing-app", grants="acme-*", scopes="token")
    other = make_key(store_url, "other-app", grants="other", scopes="token")
    server = serve_process(store_url)
    with server.client(key) as http, server.client(other) as intruder:
        token = http.get("/v1/grants/acme-1/token").json()
        assert intruder.get("/v1/grants/acme-1/token").status_code == 403
    server.terminate()  # the trail is flushed at shutdown
    store = open_store(store_url)
    try:
        trail = store.list_audit(grant="acme-1")
    finally:
        store.close()
    served = [e for e in trail if e.status == 200]
    refused = [e for e in trail if e.status == 403]
    assert [(e.api_key, e.action, e.fingerprint, e.generation) for e in served] == \
        [("billing-app", "token", token["fingerprint"], token["generation"])]  # fmt: skip
    assert [(e.api_key, e.action, e.detail, e.fingerprint) for e in refused] == \
        [("other-app", "token", "forbidden", None)]  # fmt: skip
    _audit_command_shows(store_url, token)


def _audit(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", store_url, "audit", *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def _audit_command_shows(store_url: str, token: dict[str, Any]) -> None:
    """`grantkeeper audit` (the real CLI) reads the same trail: filtered by grant and by key, as a table and as
    JSON, fingerprints only."""
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


def _run_serve(store_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(serve_command(store_url, *args), capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])  # noqa: S104 (refused before any bind)
def test_a_non_loopback_address_without_tls_is_refused(serve_store: str, host: str) -> None:
    done = _run_serve(serve_store, "--host", host)
    assert done.returncode == 3
    assert "not a loopback address" in done.stderr and "--tls-cert" in done.stderr and "--behind-proxy" in done.stderr


def test_behind_proxy_or_tls_allows_another_address() -> None:
    # Checked without binding: test servers listen on loopback only.
    assert load_config(None, env={}, host="192.0.2.1", behind_proxy=True).host == "192.0.2.1"
    assert load_config(None, env={}, host="192.0.2.1", tls_cert="c.pem", tls_key="k.pem").tls_cert == "c.pem"
    with pytest.raises(ConfigurationError, match="both a certificate and its key"):
        load_config(None, env={}, tls_cert="c.pem")
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        load_config(None, env={"GRANTKEEPER_SERVE_HOST": "192.0.2.1"})


def test_every_documented_environment_variable_sets_its_setting_with_its_kind() -> None:
    """docs/serve.md's GRANTKEEPER_SERVE_* variables, each read into its setting as its kind."""
    values = {"host": "192.0.2.7", "port": "8999", "unix": "/run/g.sock", "tls_cert": "c.pem", "tls_key": "k.pem",
              "behind_proxy": "yes", "rate": "5.5", "burst": "7", "log_level": "debug", "shutdown_timeout": "12.5",
              "max_body": "4096", "public_url": "https://gk.example.com", "connect_ttl": "120",
              "loop": "asyncio"}  # fmt: skip
    env = {f"GRANTKEEPER_SERVE_{setting.upper()}": value for setting, value in values.items()}
    documented = set(re.findall(r"GRANTKEEPER_SERVE_\w+", (Path(__file__).parents[2] / "docs/serve.md").read_text()))
    assert set(env) == documented
    config = load_config(None, env=env)
    assert (config.host, config.port, config.unix, config.tls_cert, config.tls_key) == (
        "192.0.2.7", 8999, "/run/g.sock", "c.pem", "k.pem")  # fmt: skip
    assert (config.behind_proxy, config.rate, config.burst, config.log_level) == (True, 5.5, 7, "debug")
    assert (config.shutdown_timeout, config.max_body, config.connect_ttl) == (12.5, 4096, 120.0)
    assert (config.public_url, config.loop) == ("https://gk.example.com", "asyncio")
    assert [type(v) for v in (config.port, config.rate, config.behind_proxy)] == [int, float, bool]
    with pytest.raises(ConfigurationError, match=r"\$GRANTKEEPER_SERVE_BURST: 'many' is not a valid int"):
        load_config(None, env={"GRANTKEEPER_SERVE_BURST": "many"})


def test_tls_listener_serves_https(serve_store: str, grant_on_sim: tuple[str, object], serve_process: Start,
                                   tmp_path: Path) -> None:  # fmt: skip
    cert, key_file = _self_signed(tmp_path)
    key = make_key(serve_store, "ci")
    server = serve_process(serve_store, "--host", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key_file))
    assert server.url.startswith("https://")
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(cert)), timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        assert http.get(f"{server.url}/v1/grants/acme-1/token").status_code == 200


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_path.chmod(0o600)
    return cert_path, key_path


def test_the_unix_socket_needs_no_key_and_is_0660(grant_on_sim: tuple[str, object], serve_process: Start,
                                                  tmp_path: Path) -> None:  # fmt: skip
    store_url, _ = grant_on_sim
    path = tmp_path / "serve.sock"
    server = serve_process(store_url, "--unix", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o660 and stat.S_ISSOCK(path.stat().st_mode)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://serve", timeout=30) as local:
        token = local.get("/v1/grants/acme-1/token")
    assert token.status_code == 200 and token.json()["token_type"] == "Bearer"
    with server.client() as tcp:
        assert tcp.get("/v1/grants/acme-1/token").status_code == 401  # TCP still needs a key
    assert server.terminate() == 0
    assert not path.exists()  # removed at shutdown


def test_config_file_env_overrides_and_inline_secrets(serve_store: str, grant_on_sim: tuple[str, object],
                                                      serve_process: Start, tmp_path: Path) -> None:  # fmt: skip
    inline = tmp_path / "inline.toml"
    inline.write_text('[store]\nkey = "c2VjcmV0"\n')
    done = _run_serve(serve_store, "--config", str(inline))
    assert done.returncode == 3 and "key_file or key_command" in done.stderr and "c2VjcmV0" not in done.stderr
    password = tmp_path / "password.toml"
    password.write_text('[store]\nurl = "postgresql://app:hunter2@db/grants"\n')
    done = _run_serve(serve_store, "--config", str(password))
    assert done.returncode == 3 and "url_file" in done.stderr and "hunter2" not in done.stderr

    url_file = tmp_path / "store-url"
    url_file.write_text(serve_store + "\n")
    url_file.chmod(0o600)
    good = tmp_path / "grantkeeper.toml"
    good.write_text(f'[store]\nurl_file = "{url_file}"\n[listen]\nport = 1\n[limits]\nrate = 0.5\nburst = 1\n'
                    '[logging]\nlevel = "warning"\n[scheduler]\ntick = 2\n')  # fmt: skip
    key = make_key(serve_store, "ci")
    env = {"GRANTKEEPER_STORE": "", "GRANTKEEPER_SERVE_PORT": "0", "GRANTKEEPER_SERVE_LOG_LEVEL": "info"}
    server = launch([sys.executable, "-m", "grantkeeper", "serve", "--config", str(good)], env=env)
    try:  # it logged "listening" at info: the environment beat the file's "warning"
        with server.client(key) as http:
            assert http.get("/v1/grants/acme-1/token").status_code == 200  # the store from url_file
            limited = http.get("/v1/grants/acme-1/token")  # burst 1 at 0.5/s: the second is over the limit
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["code"] == "rate_limited"
    finally:
        server.terminate()


def test_sigterm_finishes_the_refresh_in_flight_then_exits(grant_on_sim: tuple[str, object],
                                                           serve_process: Start) -> None:  # fmt: skip
    store_url, sim = grant_on_sim
    sim.inject(Delay(2.0))  # type: ignore[attr-defined]
    key = make_key(store_url, "ci")
    server = serve_process(store_url)
    answers: list[httpx.Response] = []

    def ask() -> None:
        with server.client(key) as http:
            answers.append(http.get("/v1/grants/acme-1/token"))

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + 30
    while sim.stats.refresh_calls == 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)  # the refresh is at the provider
    os.kill(server.proc.pid, signal.SIGTERM)
    asking.join(60)
    assert server.proc.wait(60) == 0
    assert [a.status_code for a in answers] == [200]
    events = [e.get("event") for e in server.events()]
    assert "stopping" in events and events[-1] == "stopped"
    store = open_store(store_url)
    try:
        assert store.get_grant("acme-1").generation == answers[0].json()["generation"]  # committed before exit
    finally:
        store.close()


def test_apikey_commands(serve_store: str, grant_on_sim: tuple[str, object]) -> None:
    base = [sys.executable, "-m", "grantkeeper", "--store", serve_store, "apikey"]
    created = subprocess.run([*base, "create", "deploy", "--grants", "acme-*,billing", "--scopes", "token,read",
                              "--expires", "90d"], capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and re.fullmatch(r"gk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert "deploy" in created.stderr and key not in created.stderr
    listed = subprocess.run([*base, "list"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert (
        "deploy" in listed and "acme-*,billing" in listed and "active" in listed and key.split("_", 2)[2] not in listed
    )  # the secret may hold "_"
    again = subprocess.run([*base, "create", "deploy", "--grants", "x"], capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    assert again.returncode == 3 and "exists" in again.stderr
    bad = subprocess.run([*base, "create", "other", "--grants", "x", "--scopes", "token,admin"], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 3 and "unknown scope 'admin'" in bad.stderr
    subprocess.run([*base, "revoke", "deploy"], capture_output=True, text=True, timeout=60, check=True)
    listed = subprocess.run([*base, "list"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "revoked" in listed
    as_json = json.loads(subprocess.run([*base, "list", "--json"], capture_output=True, text=True, timeout=60,
                                        check=True).stdout)  # fmt: skip
    assert [(k["name"], k["state"], k["grants"], k["scopes"]) for k in as_json] == \
        [("deploy", "revoked", ["acme-*", "billing"], ["token", "read"])]  # fmt: skip
    assert as_json[0]["expires_at"] - as_json[0]["created_at"] == pytest.approx(90 * 86400)
    store = open_store(serve_store)
    try:
        stored = b"".join(str(r.as_dict()).encode() for r in store.list_api_keys())
    finally:
        store.close()
    assert key.split("_", 2)[2].encode() not in stored


def test_a_stale_unix_socket_is_replaced_a_live_one_refused(grant_on_sim: tuple[str, object], serve_process: Start,
                                                            tmp_path: Path) -> None:  # fmt: skip
    import socket

    store_url, _ = grant_on_sim
    path = tmp_path / "serve.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # what a SIGKILLed instance leaves behind: a socket file nobody listens on
    server = serve_process(store_url, "--unix", str(path))
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://serve", timeout=30) as local:
        assert local.get("/livez").status_code == 200
    second = serve_process(store_url, "--unix", str(path), wait=False)
    assert second.proc.wait(60) == 3
    assert "in use by another running process" in second.log_text()
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("keep me")
    third = serve_process(store_url, "--unix", str(not_a_socket), wait=False)
    assert third.proc.wait(60) == 3 and not_a_socket.read_text() == "keep me"
    assert server.proc.poll() is None


def test_the_key_can_come_from_a_key_file_named_in_the_config(grant_on_sim: tuple[str, object], serve_process: Start,
                                                               tmp_path: Path) -> None:  # fmt: skip
    store_url, _ = grant_on_sim
    key = make_key(store_url, "ci")
    store_file = Path(store_url.removeprefix("sqlite://"))
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    key_file = secret_dir / "grantkeeper-key"
    store_file.with_name(store_file.name + ".key").rename(key_file)  # no key beside the store any more
    key_file.chmod(0o600)
    config = tmp_path / "grantkeeper.toml"
    config.write_text(f'[store]\nkey_file = "{key_file}"\n')
    server = serve_process(store_url, "--config", str(config))
    with server.client(key) as http:
        assert http.get("/v1/grants/acme-1/token").status_code == 200
    key_file.chmod(0o644)  # readable by others: refused, as key files are
    refused = _run_serve(store_url, "--config", str(config))
    assert refused.returncode == 3 and "grantkeeper-key" in refused.stderr


def test_a_credential_like_grant_name_is_shown_when_served_and_concealed_when_refused(
    serve_store: str, make_sim: Callable[..., object], serve_process: Start
) -> None:
    name = "AcmeCorpProductionEuropeWest1"  # 29 token characters, both cases: looks like a credential
    sim = make_sim()
    setup_grant(serve_store, sim, grant=name)
    key = make_key(serve_store, "ci", grants="Acme*")
    server = serve_process(serve_store)
    with server.client(key) as http:
        assert http.get(f"/v1/grants/{name}/token").status_code == 200
        refused = http.get(f"/v1/grants/{name}X/token")
    assert refused.status_code == 404 and name not in refused.text and "[redacted]" in refused.text
    server.terminate()
    store = open_store(serve_store)
    try:
        trail = store.list_audit()
    finally:
        store.close()
    assert [(e.grant, e.status) for e in reversed(trail)] == [(name, 200), ("[redacted]", 404)]
    paths = [e["path"] for e in server.events() if e.get("event") == "request"]
    assert paths == [f"/v1/grants/{name}/token", "/v1/grants/[redacted]/token"]
