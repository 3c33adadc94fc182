"""Per-provider network and consent options (schema version 6): ``--authorize-param``, ``--api-base-url``,
``--ca-bundle``, ``--proxy`` and ``--insecure-http``. Each is stored, listed, carried by bundles and kept when
the provider is updated; each refuses what it cannot use with a message saying what is accepted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from grantkeeper import Keeper, Provider, Secret
from grantkeeper._exceptions import ConfigurationError, ConsentFailed
from grantkeeper.bundle import BundleKey, export_bundle, import_bundle
from grantkeeper.consent import connect
from grantkeeper.stores import open_store
from grantkeeper.tokens.discovery import metadata_urls
from tests.cli.test_cli_providers import invoke, stored
from tests.consent.test_connect import Browser, to_listener

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/gk.db"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text(PEM)
    return path


BASE = ("provider", "add", "p", "--token-url", "https://as.example.com/token", "--client-id", "c",
        "--client-secret-env", "S")  # fmt: skip


def test_options_are_stored_listed_and_kept_on_update(url: str, ca_file: Path) -> None:
    out = invoke(url, *BASE, "--authorize-param", "prompt=consent", "--authorize-param", "access_type=offline",
                 "--api-base-url", "https://api.example.com/v2", "--ca-bundle", str(ca_file),
                 "--proxy", "http://proxy.corp.example:3128")  # fmt: skip
    assert out.exit_code == 0, out.output
    provider = stored(url)
    assert provider.authorize_params == (("prompt", "consent"), ("access_type", "offline"))
    assert (provider.api_base_url, provider.ca_bundle) == ("https://api.example.com/v2", str(ca_file))
    assert (provider.proxy, provider.insecure_http) == ("http://proxy.corp.example:3128", False)
    listed = json.loads(invoke(url, "provider", "list", "--json").output)[0]
    assert listed["authorize_params"] == {"prompt": "consent", "access_type": "offline"}
    assert listed["proxy"] == "http://proxy.corp.example:3128"
    assert invoke(url, *BASE, "--skew", "5").exit_code == 0
    assert dataclasses.replace(stored(url), skew=30.0) == provider
    assert invoke(url, *BASE, "--authorize-param", "prompt=login").exit_code == 0
    assert stored(url).authorize_params == (("prompt", "login"),)


def test_bundles_carry_the_options(tmp_path: Path, ca_file: Path) -> None:
    provider = Provider(
        name="p", token_url="http://as.internal.example/token", client_id="c", client_secret=Secret("s" * 20),
        authorize_params=(("prompt", "consent"),), api_base_url="https://api.example.com", ca_bundle=str(ca_file),
        proxy="http://proxy.example:8080", insecure_http=True,
    )  # fmt: skip
    key = BundleKey.passphrase(Secret("a long enough passphrase"))
    with Keeper.open(f"sqlite://{tmp_path}/a.db") as source:
        source.add_provider(provider)
        source.import_grant("g", provider="p", refresh_token="rt-0123456789")
        data = export_bundle(source.store, key, now=source.clock.now(), scrypt_n=2**14)
    with Keeper.open(f"sqlite://{tmp_path}/b.db") as target:
        import_bundle(target.store, data, key, now=target.clock.now())
        assert target.store.get_provider("p") == provider


@pytest.mark.parametrize("param", ["state=x", "redirect_uri=https://evil.example/", "code_challenge=x", "scope=a"])
def test_parameters_grantkeeper_sets_itself_are_refused(url: str, param: str) -> None:
    out = invoke(url, *BASE, "--authorize-param", param)
    assert out.exit_code == 3
    assert "grantkeeper sets" in out.output
    with pytest.raises(ConfigurationError):
        open_store(url, create=False).get_provider("p")


def test_a_malformed_authorize_param_is_a_usage_error(url: str) -> None:
    out = invoke(url, *BASE, "--authorize-param", "prompt")
    assert out.exit_code == 2 and "is not NAME=VALUE" in out.output


def test_proxy_credentials_are_refused_and_never_echoed(url: str) -> None:
    out = invoke(url, *BASE, "--proxy", "http://alice:hunter2-secret@proxy.example:3128")
    assert out.exit_code == 3
    assert "HTTPS_PROXY" in out.output and "hunter2" not in out.output


@pytest.mark.parametrize("proxy", ["socks5://proxy.example:1080", "proxy.example:3128", "http://proxy.example/path"])
def test_proxy_must_be_an_http_proxy_url(url: str, proxy: str) -> None:
    out = invoke(url, *BASE, "--proxy", proxy)
    assert out.exit_code == 3 and "http://host:port" in out.output


def test_ca_bundle_must_be_a_readable_pem_file(url: str, tmp_path: Path) -> None:
    missing = invoke(url, *BASE, "--ca-bundle", str(tmp_path / "nope.pem"))
    assert missing.exit_code == 2 and "cannot read" in missing.output
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = invoke(url, *BASE, "--ca-bundle", str(tmp_path / "junk.pem"))
    assert junk.exit_code == 2 and "holds no PEM certificate" in junk.output


def test_ca_bundle_is_stored_as_an_absolute_path(url: str, ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ca_file.parent)
    assert invoke(url, *BASE, "--ca-bundle", ca_file.name).exit_code == 0
    assert stored(url).ca_bundle == str(ca_file)


def test_plain_http_off_loopback_needs_insecure_http(url: str) -> None:
    args = ("provider", "add", "p", "--token-url", "http://as.lab.example/token", "--client-id", "c")
    refused = invoke(url, *args)
    assert refused.exit_code == 3
    assert "only https is accepted, or http on loopback (127.0.0.1, localhost, ::1)" in refused.output
    assert "--insecure-http" in refused.output
    assert invoke(url, *args, "--insecure-http").exit_code == 0
    assert stored(url).insecure_http is True
    assert invoke(url, "provider", "add", "p", "--skew", "5").exit_code == 0  # the stored flag still applies
    again = invoke(url, "provider", "add", "p", "--no-insecure-http")
    assert again.exit_code == 3 and "uses plain http to as.lab.example" in again.output
    assert stored(url).insecure_http is True


def test_discovery_says_what_it_accepts_and_honours_insecure_http() -> None:
    with pytest.raises(ConfigurationError, match=r"only https is accepted, or http on loopback"):
        metadata_urls("http://sso.lab.example/realms/a")
    assert metadata_urls("http://sso.lab.example/realms/a", insecure_http=True)[0].startswith("http://sso.lab")


def test_connect_sends_the_profile_then_provider_then_call_parameters(tmp_path: Path) -> None:
    provider = Provider(
        name="fake", token_url="https://as.example/token", client_id="cid", client_secret=Secret("s" * 32),
        authorization_url="https://as.example/authorize", authorize_params=(("prompt", "consent"), ("x", "1")),
    )  # fmt: skip
    with Keeper.open(f"sqlite://{tmp_path}/c.db") as keeper:
        keeper.add_provider(provider)
        browser = Browser(to_listener(code="c", state="not-the-state"))
        with pytest.raises(ConsentFailed):
            connect(keeper, "g", provider="fake", timeout=60, show=browser.show, authorize_params={"x": "2"})
        browser.join()
        assert browser.request is not None
        query = parse_qs(urlsplit(browser.request.url).query)
        assert (query["prompt"], query["x"], query["response_type"]) == (["consent"], ["2"], ["code"])
        with pytest.raises(ConfigurationError, match="'state' cannot be given"):
            connect(keeper, "g", provider="fake", timeout=60, show=browser.show, authorize_params={"state": "s"})


def test_connect_refuses_authorize_params_with_the_device_flow(url: str) -> None:
    out = invoke(url, "connect", "g", "--provider", "p", "--device", "--authorize-param", "prompt=consent")
    assert out.exit_code == 2 and "browser flow" in out.output
