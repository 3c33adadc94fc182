"""``grantkeeper provider add --profile / profiles / add`` overrides: a profile is a starting point, every field
can be overridden, stored credentials survive unless the method no longer uses them, and errors are clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from grantkeeper import Secret
from grantkeeper.model import AuthMethod, Provider, RotationMode
from grantkeeper.profiles import load_profiles
from grantkeeper.stores import open_store
from tests.signing_keys import key_file

DAY = 86400.0


def invoke(url: str, *args: str, stdin: str = "") -> Result:
    from grantkeeper.cli.main import cli

    return CliRunner().invoke(cli, ["--store", url, *args], input=stdin)


def stored(url: str, name: str = "p") -> Provider:
    store = open_store(url, create=False)
    try:
        return store.get_provider(name)
    finally:
        store.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/gk.db"


class TestProfilesCommand:
    def test_lists_every_profile(self) -> None:
        out = invoke("memory://", "provider", "profiles")
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert lines[0].split()[:3] == ["PROFILE", "PROVIDER", "ROTATION"]
        assert {line.split()[0] for line in lines[1:]} == set(load_profiles())

    def test_json_carries_sources(self) -> None:
        out = invoke("memory://", "provider", "profiles", "--json")
        data = json.loads(out.output)
        xero = next(p for p in data if p["name"] == "xero")
        assert xero["reuse_grace"] == 1800 and xero["facts"]["reuse_grace"] == ["xe1"]
        assert xero["sources"]["xe1"].startswith("https://")

    def test_one_profile_shows_the_source_of_each_fact(self) -> None:
        out = invoke("memory://", "provider", "profiles", "microsoft_entra")
        assert out.exit_code == 0, out.output
        assert "https://learn.microsoft.com/entra/identity-platform/refresh-tokens" in out.output
        assert "source: unverified" in out.output
        assert "--param tenant=" in out.output

    def test_unknown_profile(self) -> None:
        out = invoke("memory://", "provider", "profiles", "nonesuch")
        assert out.exit_code == 3 and "provider profiles" in out.output


class TestAddFromProfile:
    def test_profile_values_are_stored(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--profile", "xero", "--client-id", "cid",
                     "--client-secret-env", "XERO_SECRET")  # fmt: skip
        assert out.exit_code == 0, out.output
        provider = stored(url)
        assert (provider.token_url, provider.auth_method, provider.reuse_grace) == (
            "https://identity.xero.com/connect/token", AuthMethod.CLIENT_SECRET_POST, 1800.0)  # fmt: skip
        assert (provider.refresh_idle_ttl, provider.default_expires_in, provider.profile) == (60 * DAY, 1800.0, "xero")

    def test_every_field_overrides_the_profile(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--profile", "atlassian", "--client-id", "cid",
                     "--client-secret-env", "S", "--token-url", "https://auth.example.com/token", "--rotation", "never",
                     "--reuse-grace", "5", "--skew", "7", "--default-expires-in", "99", "--refresh-idle-ttl", "100",
                     "--refresh-absolute-ttl", "200", "--auth-method", "client_secret_basic",
                     "--send-scope")  # fmt: skip
        assert out.exit_code == 0, out.output
        p = stored(url)
        assert (p.token_url, p.rotation, p.reuse_grace, p.skew, p.default_expires_in) == (
            "https://auth.example.com/token", RotationMode.NEVER, 5.0, 7.0, 99.0)  # fmt: skip
        assert (p.refresh_idle_ttl, p.refresh_absolute_ttl, p.auth_method, p.send_scope) == (
            100.0, 200.0, AuthMethod.CLIENT_SECRET_BASIC, True)  # fmt: skip

    def test_endpoint_options_and_profile_authorization_url(self, url: str) -> None:
        revoke = "https://identity.xero.com/connect/revocation"
        out = invoke(url, "provider", "add", "p", "--profile", "xero", "--client-id", "cid",
                     "--client-secret-env", "S", "--revocation-url", revoke)  # fmt: skip
        assert out.exit_code == 0, out.output
        p = stored(url)
        assert p.authorization_url == load_profiles()["xero"].authorization_url
        assert p.revocation_url == revoke
        out = invoke(url, "provider", "add", "p", "--authorization-url", "https://as.example.com/authorize")
        assert out.exit_code == 0, out.output
        p = stored(url)
        assert (p.authorization_url, p.revocation_url) == (
            "https://as.example.com/authorize", revoke)  # fmt: skip
        listed = json.loads(invoke(url, "provider", "list", "--json").output)
        assert listed[0]["authorization_url"] == "https://as.example.com/authorize"

    def test_endpoint_urls_are_checked(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--token-url", "https://as.example.com/token", "--client-id", "c",
                     "--client-secret-env", "S", "--revocation-url", "http://as.example.com/revoke")  # fmt: skip
        assert out.exit_code == 3 and "uses plain http to" in out.output

    def test_placeholders_need_params(self, url: str) -> None:
        missing = invoke(url, "provider", "add", "p", "--profile", "okta", "--client-id", "c")
        assert missing.exit_code == 3 and "needs --param okta_domain" in missing.output
        ok = invoke(url, "provider", "add", "p", "--profile", "okta", "--client-id", "c",
                    "--param", "okta_domain=dev-1.okta.com", "--client-secret-env", "S")  # fmt: skip
        assert ok.exit_code == 0, ok.output
        assert stored(url).token_url == "https://dev-1.okta.com/oauth2/default/v1/token"

    def test_param_without_profile_is_a_usage_error(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--token-url", "https://a.example/t", "--client-id", "c",
                     "--param", "x=y")  # fmt: skip
        assert out.exit_code == 2

    def test_malformed_param(self, url: str) -> None:
        assert invoke(url, "provider", "add", "p", "--profile", "okta", "--param", "nonsense").exit_code == 2

    def test_new_provider_needs_a_token_url_or_profile(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--client-id", "c")
        assert out.exit_code == 2 and "--token-url" in out.output

    def test_reapplying_a_profile_keeps_the_stored_secret(self, url: str) -> None:
        first = invoke(url, "provider", "add", "p", "--profile", "box", "--client-id", "c", "--client-secret-stdin",
                       stdin="box-secret-value\n")  # fmt: skip
        assert first.exit_code == 0, first.output
        again = invoke(url, "provider", "add", "p", "--profile", "box", "--skew", "5")
        assert again.exit_code == 0, again.output
        provider = stored(url)
        assert provider.client_secret == Secret("box-secret-value") and provider.skew == 5.0
        assert "box-secret-value" not in first.output + again.output

    def test_switching_to_private_key_jwt_drops_the_secret(self, url: str) -> None:
        invoke(url, "provider", "add", "p", "--token-url", "https://as.example.com/t", "--client-id", "c",
               "--client-secret-stdin", stdin="s3cret\n")  # fmt: skip
        out = invoke(url, "provider", "add", "p", "--auth-method", "private_key_jwt", "--private-key-file",
                     key_file("rsa"), "--key-id", "k1")  # fmt: skip
        assert out.exit_code == 0, out.output
        provider = stored(url)
        assert (provider.client_secret, provider.private_key_file, provider.key_id) == (None, key_file("rsa"), "k1")
        back = invoke(url, "provider", "add", "p", "--auth-method", "client_secret_post", "--client-secret-env", "S")
        assert back.exit_code == 0, back.output
        assert (stored(url).private_key_file, stored(url).key_id) == (None, None)

    def test_profile_issuer_audience(self, url: str) -> None:
        out = invoke(url, "provider", "add", "p", "--profile", "keycloak", "--client-id", "c", "--param",
                     "server=https://sso.example.com", "--param", "realm=acme", "--auth-method", "private_key_jwt",
                     "--private-key-file", key_file("ec"))  # fmt: skip
        assert out.exit_code == 0, out.output
        assert stored(url).jwt_audience == "https://sso.example.com/realms/acme"
