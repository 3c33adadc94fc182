"""Hosted connect's settings: the public URL from the option, the file's ``[connect]`` or the environment, and the
URLs that are refused (the redirect URI providers must allow is built from it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.serve.config import DEFAULT_CONNECT_TTL, load_config
from grantkeeper.serve.connect_sessions import ConnectNotConfigured, ConnectSettings


def test_the_public_url_comes_from_the_option_the_file_or_the_environment(tmp_path: Path) -> None:
    assert load_config(None, env={}).public_url is None
    assert load_config(None, env={}).connect_ttl == DEFAULT_CONNECT_TTL == 600
    config = tmp_path / "grantkeeper.toml"
    config.write_text('[connect]\npublic_url = "https://gk.example.com/broker/"\nsession_ttl = 120\n')
    from_file = load_config(str(config), env={})
    assert (from_file.public_url, from_file.connect_ttl) == ("https://gk.example.com/broker", 120.0)
    env = {"GRANTKEEPER_SERVE_PUBLIC_URL": "https://other.example.com", "GRANTKEEPER_SERVE_CONNECT_TTL": "300"}
    from_env = load_config(str(config), env=env)
    assert (from_env.public_url, from_env.connect_ttl) == ("https://other.example.com", 300.0)
    from_option = load_config(str(config), env=env, public_url="http://127.0.0.1:9000")
    assert from_option.public_url == "http://127.0.0.1:9000"
    settings = ConnectSettings(from_file.public_url, from_file.connect_ttl)
    assert settings.redirect_uri == "https://gk.example.com/broker/oauth/callback" and settings.secure


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://gk.example.com", "use https"),
        ("https://gk.example.com/?x=1", "query"),
        ("https://gk.example.com/#top", "fragment"),
        ("https://user:pw@gk.example.com", "credentials"),
        ("ftp://gk.example.com", "not an http"),
        ("ftp://user:pw@gk.example.com", "not an http"),
        ("https://", "not an http"),
        ("https://gk.example.com:notaport", "not an http"),
    ],
)
def test_a_public_url_that_cannot_serve_as_a_redirect_uri_is_refused(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        load_config(None, env={}, public_url=url)
    assert "pw" not in refused.value.message


@pytest.mark.parametrize("ttl", ["5", "100000"])
def test_a_session_ttl_out_of_range_is_refused(ttl: str) -> None:
    with pytest.raises(ConfigurationError, match="session_ttl must be 10-86400 seconds"):
        load_config(None, env={"GRANTKEEPER_SERVE_CONNECT_TTL": ttl})


def test_without_a_public_url_the_redirect_uri_is_a_typed_refusal() -> None:
    with pytest.raises(ConnectNotConfigured, match="--public-url"):
        _ = ConnectSettings().redirect_uri
