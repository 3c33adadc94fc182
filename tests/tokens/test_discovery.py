"""Discovery: RFC 8414 / OpenID Connect metadata read from the simulator on loopback, validated strictly; the
CLI's ``provider discover`` makes a working provider from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import ConfigurationError, ProviderUnavailable
from grantkeeper.model import AuthMethod
from grantkeeper.stores import open_store
from grantkeeper.tokens.discovery import choose_auth_method, discover, metadata_urls
from tests.signing_keys import key_file, public_pem

Sim = Any


class TestMetadataUrls:
    def test_issuer_without_path(self) -> None:
        assert metadata_urls("https://as.example.com") == [
            "https://as.example.com/.well-known/oauth-authorization-server",
            "https://as.example.com/.well-known/openid-configuration",
        ]

    def test_issuer_with_path(self) -> None:
        """RFC 8414 §3.1 inserts the well-known segment before the path; OIDC appends it."""
        assert metadata_urls("https://as.example.com/tenant/a/") == [
            "https://as.example.com/.well-known/oauth-authorization-server/tenant/a",
            "https://as.example.com/tenant/a/.well-known/openid-configuration",
        ]

    @pytest.mark.parametrize("issuer", ["http://as.example.com", "as.example.com", "https://as.example.com/?x=1"])
    def test_bad_issuer(self, issuer: str) -> None:
        with pytest.raises(ConfigurationError, match="--issuer"):
            metadata_urls(issuer)


class TestDiscover:
    def test_reads_rfc8414_metadata(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("client_secret_post", "client_secret_basic"))
        metadata = discover(sim.base_url)
        assert metadata.token_endpoint == sim.url
        assert metadata.auth_methods == ("client_secret_post", "client_secret_basic")
        assert metadata.refresh_supported is True
        assert metadata.source.endswith("/.well-known/oauth-authorization-server")

    def test_falls_back_to_openid_configuration(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        sim.serve_metadata(at=("oidc",))
        metadata = discover(sim.base_url + "/realms/acme")
        assert metadata.source == sim.base_url + "/realms/acme/.well-known/openid-configuration"
        assert metadata.issuer == sim.base_url + "/realms/acme"

    def test_tenant_issuer_over_rfc8414(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        assert discover(sim.base_url + "/tenant-a").source == (
            sim.base_url + "/.well-known/oauth-authorization-server/tenant-a")  # fmt: skip

    def test_no_metadata_is_a_configuration_error(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        sim.serve_metadata(at=())
        with pytest.raises(ConfigurationError, match=r"tried .*HTTP 404.*HTTP 404"):
            discover(sim.base_url)

    def test_unreachable_server_is_transient(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        issuer = sim.base_url
        sim.stop()
        with pytest.raises(ProviderUnavailable, match="could not read metadata"):
            discover(issuer)

    def test_omitted_auth_methods_default_to_basic(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        document = {k: v for k, v in sim.metadata().items() if k != "token_endpoint_auth_methods_supported"}
        sim.serve_metadata(document)
        assert discover(sim.base_url).auth_methods == ("client_secret_basic",)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"issuer": "https://impostor.example.com"}, "names issuer 'https://impostor.example.com'"),
            ({"issuer": None}, "names issuer 'no issuer'"),
            ({"token_endpoint": None}, "token_endpoint is missing"),
            ({"token_endpoint": "http://as.example.com/token"}, "token_endpoint URL uses plain http to as.example"),
            ({"token_endpoint": "/token"}, "token_endpoint URL must be an absolute URL"),
            ({"token_endpoint_auth_methods_supported": "client_secret_basic"}, "must be a list of strings"),
            ({"grant_types_supported": [1, 2]}, "grant_types_supported must be a list of strings"),
            ({"authorization_endpoint": "javascript:alert(1)"}, "authorization_endpoint URL must be an absolute"),
            ({"revocation_endpoint": "http://as.example.com/revoke"}, "revocation_endpoint URL uses plain http"),
        ],
    )
    def test_invalid_metadata(self, make_sim: Callable[..., Sim], change: dict[str, Any], message: str) -> None:
        sim = make_sim()
        document = {**sim.metadata(), **change}
        sim.serve_metadata({k: v for k, v in document.items() if v is not None})
        with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            discover(sim.base_url)

    @pytest.mark.parametrize(("body", "message"), [(b"<html>hi</html>", "is not JSON"), (b"[1]", "not a JSON object"),
                                                   (b"{" * 100_000, "is not JSON")])  # fmt: skip
    def test_malformed_documents(self, make_sim: Callable[..., Sim], body: bytes, message: str) -> None:
        sim = make_sim()
        sim.serve_metadata(body)
        with pytest.raises(ConfigurationError, match=message):
            discover(sim.base_url)

    def test_oversized_document(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        sim.serve_metadata({**sim.metadata(), "padding": "x" * 400_000})
        with pytest.raises(ConfigurationError, match="larger than"):
            discover(sim.base_url)


class TestChooseAuthMethod:
    def test_requested_must_be_supported(self) -> None:
        with pytest.raises(ConfigurationError, match="does not list client_secret_post"):
            choose_auth_method(["client_secret_basic"], requested=AuthMethod.CLIENT_SECRET_POST, has_secret=True,
                               has_key=False)  # fmt: skip

    @pytest.mark.parametrize(
        ("supported", "secret", "key", "expected"),
        [
            (["client_secret_post", "client_secret_basic"], True, False, AuthMethod.CLIENT_SECRET_BASIC),
            (["client_secret_post", "private_key_jwt"], True, False, AuthMethod.CLIENT_SECRET_POST),
            (["client_secret_basic", "private_key_jwt"], False, True, AuthMethod.PRIVATE_KEY_JWT),
            (["none", "client_secret_basic"], False, False, AuthMethod.NONE),
        ],
    )
    def test_best_for_the_credentials(self, supported: list[str], secret: bool, key: bool,
                                      expected: AuthMethod) -> None:  # fmt: skip
        assert choose_auth_method(supported, requested=None, has_secret=secret, has_key=key) is expected

    def test_nothing_fits(self) -> None:
        with pytest.raises(ConfigurationError, match="none of which works with a client secret"):
            choose_auth_method(["private_key_jwt"], requested=None, has_secret=True, has_key=False)


def run(
    store_url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", store_url, *args], input=stdin, capture_output=True,
        text=True, env={**os.environ, **(env or {})}, timeout=120, check=False,
    )  # fmt: skip


class TestDiscoverCommand:
    def test_discovered_provider_refreshes(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        """discover sets the token URL and a supported method; the grant then refreshes through it."""
        sim = make_sim(auth_methods=("client_secret_post",))
        url = f"sqlite://{tmp_path / 'gk.db'}"
        env = {"SIM_SECRET": sim.client_secret}
        added = run(url, "provider", "discover", "sim", "--issuer", sim.base_url, "--client-id", sim.client_id,
                    "--client-secret-env", "SIM_SECRET", "--profile", "xero", env=env)  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "client_secret_post" in added.stdout and sim.client_secret not in added.stdout + added.stderr
        store = open_store(url)
        try:
            provider = store.get_provider("sim")
        finally:
            store.close()
        assert (provider.token_url, provider.auth_method, provider.profile) == (
            sim.url, AuthMethod.CLIENT_SECRET_POST, "xero")  # fmt: skip
        assert provider.reuse_grace == 1800.0  # from the profile
        assert run(url, "grant", "import", "g", "--provider", "sim", stdin=sim.issue_grant()).returncode == 0
        token = run(url, "token", "g", env=env)
        assert token.returncode == 0, token.stderr
        assert sim.stats.successes == 1

    def test_discover_stores_authorization_and_revocation_endpoints(
        self, make_sim: Callable[..., Sim], tmp_path: Path
    ) -> None:
        sim = make_sim()
        sim.serve_metadata({**sim.metadata(), "authorization_endpoint": sim.base_url + "/authorize",
                            "revocation_endpoint": sim.base_url + "/revoke"})  # fmt: skip
        url = f"sqlite://{tmp_path / 'gk.db'}"
        added = run(url, "provider", "discover", "sim", "--issuer", sim.base_url, "--client-id", sim.client_id,
                    "--client-secret-env", "SIM_SECRET")  # fmt: skip
        assert added.returncode == 0, added.stderr
        store = open_store(url)
        try:
            provider = store.get_provider("sim")
        finally:
            store.close()
        assert (provider.authorization_url, provider.revocation_url) == (
            sim.base_url + "/authorize", sim.base_url + "/revoke")  # fmt: skip

    def test_server_text_reaches_the_terminal_without_escapes(self, make_sim: Callable[..., Sim],
                                                              tmp_path: Path) -> None:  # fmt: skip
        """Auth method names are the server's own words; one carrying terminal escapes prints neutralised."""
        sim = make_sim()
        sim.serve_metadata({**sim.metadata(), "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "x\x1b]0;owned\x07\x1b[2J"]})  # fmt: skip
        added = run(f"sqlite://{tmp_path / 'gk.db'}", "provider", "discover", "sim", "--issuer", sim.base_url,
                    "--client-id", sim.client_id, "--client-secret-env", "SIM_SECRET")  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "\x1b" not in added.stdout + added.stderr and "\x07" not in added.stdout
        assert "server auth methods: client_secret_basic, x?]0;owned??[2J" in added.stdout

    def test_discover_with_a_private_key(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        sim = make_sim(auth_methods=("client_secret_basic", "private_key_jwt"), client_public_key=public_pem("ec"))
        url = f"sqlite://{tmp_path / 'gk.db'}"
        added = run(url, "provider", "discover", "sim", "--issuer", sim.base_url, "--client-id", sim.client_id,
                    "--private-key-file", key_file("ec"))  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "private_key_jwt" in added.stdout
        assert run(url, "grant", "import", "g", "--provider", "sim", stdin=sim.issue_grant()).returncode == 0
        assert run(url, "token", "g").returncode == 0
        assert sim.stats.successes == 1

    def test_server_without_refresh_grant_is_refused(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        sim = make_sim()
        sim.serve_metadata({**sim.metadata(), "grant_types_supported": ["authorization_code"]})
        out = run(f"sqlite://{tmp_path / 'gk.db'}", "provider", "discover", "sim", "--issuer", sim.base_url,
                  "--client-id", "c", "--client-secret-env", "X")  # fmt: skip
        assert out.returncode == 3
        assert "without refresh_token" in out.stderr

    def test_bad_metadata_exits_with_configuration_error(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        sim = make_sim()
        sim.serve_metadata(json.dumps({"issuer": "https://other.example"}).encode())
        out = run(f"sqlite://{tmp_path / 'gk.db'}", "provider", "discover", "sim", "--issuer", sim.base_url,
                  "--client-id", "c")  # fmt: skip
        assert out.returncode == 3
        assert "error[configuration]" in out.stderr and "names issuer" in out.stderr
