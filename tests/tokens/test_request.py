"""build_refresh_request(): RFC 6749 §6 refresh requests for each client authentication method."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote_plus

import httpx
import pytest

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.model import AuthMethod, Provider
from grantkeeper.tokens.request import build_refresh_request
from tests.signing_keys import key_file

TOKEN_URL = "https://auth.example.com/oauth/token"
REFRESH = "RT-refresh-token-value-0123456789"
CLIENT_SECRET = "client-secret-value-abcdefghij"
ENV_VAR = "GK_TEST_CLIENT_SECRET"


def provider(auth: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC, **options: object) -> Provider:
    if auth is AuthMethod.PRIVATE_KEY_JWT:
        options.setdefault("private_key_file", key_file("rsa"))
    elif "client_secret" not in options and "client_secret_env" not in options and auth is not AuthMethod.NONE:
        options["client_secret"] = Secret(CLIENT_SECRET)
    options.setdefault("client_id", "my-client")
    return Provider(name="p", token_url=TOKEN_URL, auth_method=auth, **options)  # type: ignore[arg-type]


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def basic_pair(request: httpx.Request) -> str:
    """The decoded (still form-encoded) "id:secret" of a Basic Authorization header."""
    scheme, _, value = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(value, validate=True).decode("ascii")


def test_request_is_a_form_post_to_the_token_url() -> None:
    """The request is a POST of a form body to the provider's token URL, asking for JSON."""
    request = build_refresh_request(provider(), Secret(REFRESH))
    assert (request.method, str(request.url)) == ("POST", TOKEN_URL)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"


@pytest.mark.parametrize("auth", list(AuthMethod))
def test_form_has_grant_type_refresh_token(auth: AuthMethod) -> None:
    """Every method sends grant_type=refresh_token."""
    assert form(build_refresh_request(provider(auth), Secret(REFRESH)))["grant_type"] == ["refresh_token"]


@pytest.mark.parametrize("auth", list(AuthMethod))
def test_form_has_the_refresh_token(auth: AuthMethod) -> None:
    """Every method sends the refresh token in the form body."""
    assert form(build_refresh_request(provider(auth), Secret(REFRESH)))["refresh_token"] == [REFRESH]


def test_refresh_token_with_reserved_characters_round_trips() -> None:
    """A refresh token with & = + % / and spaces arrives unchanged after form decoding."""
    token = "a&b=c+d%20e/f g?h#i"
    assert form(build_refresh_request(provider(), Secret(token)))["refresh_token"] == [token]


def test_basic_header_carries_id_and_secret() -> None:
    """client_secret_basic sends Basic base64(id:secret)."""
    request = build_refresh_request(provider(), Secret(REFRESH))
    assert basic_pair(request) == f"my-client:{CLIENT_SECRET}"


@pytest.mark.parametrize(
    ("client_id", "secret", "encoded"),
    [
        ("id:with:colons", "s:e:c", "id%3Awith%3Acolons:s%3Ae%3Ac"),
        ("plus+id", "pl+us", "plus%2Bid:pl%2Bus"),
        ("pct%id", "100%", "pct%25id:100%25"),
        ("space id", "sec ret", "space+id:sec+ret"),
        ("slash/id", "a/b=c&d", "slash%2Fid:a%2Fb%3Dc%26d"),
        ("caf\u00e9", "\u00fc", "caf%C3%A9:%C3%BC"),
    ],
)
def test_basic_credentials_are_form_urlencoded_before_base64(client_id: str, secret: str, encoded: str) -> None:
    """RFC 6749 §2.3.1: id and secret are each form-urlencoded (space as +) before Base64."""
    request = build_refresh_request(provider(client_id=client_id, client_secret=Secret(secret)), Secret(REFRESH))
    assert basic_pair(request) == encoded


@pytest.mark.parametrize(("client_id", "secret"), [("a:b", "c:d"), ("x+y %z", "p%2Bq r+s"), ("\u00e9:\u00e8", "::")])
def test_basic_credentials_decode_back_to_the_originals(client_id: str, secret: str) -> None:
    """Splitting the decoded header on its only ':' and form-decoding each side gives the id and secret back."""
    request = build_refresh_request(provider(client_id=client_id, client_secret=Secret(secret)), Secret(REFRESH))
    enc_id, enc_secret = basic_pair(request).split(":")
    assert (unquote_plus(enc_id), unquote_plus(enc_secret)) == (client_id, secret)


def test_basic_sends_no_credentials_in_the_body() -> None:
    """client_secret_basic keeps client_id and client_secret out of the form body."""
    fields = form(build_refresh_request(provider(), Secret(REFRESH)))
    assert "client_secret" not in fields
    assert "client_id" not in fields


def test_post_sends_id_and_secret_as_form_fields() -> None:
    """client_secret_post sends client_id and client_secret in the form body."""
    fields = form(build_refresh_request(provider(AuthMethod.CLIENT_SECRET_POST), Secret(REFRESH)))
    assert (fields["client_id"], fields["client_secret"]) == (["my-client"], [CLIENT_SECRET])


def test_post_sends_no_authorization_header() -> None:
    """client_secret_post sends no Authorization header."""
    assert (
        "authorization" not in build_refresh_request(provider(AuthMethod.CLIENT_SECRET_POST), Secret(REFRESH)).headers
    )


def test_post_form_encodes_special_characters() -> None:
    """client_secret_post credentials with reserved characters round-trip through the form body."""
    p = provider(AuthMethod.CLIENT_SECRET_POST, client_id="id:+ %", client_secret=Secret("s&=+ %"))
    fields = form(build_refresh_request(p, Secret(REFRESH)))
    assert (fields["client_id"], fields["client_secret"]) == (["id:+ %"], ["s&=+ %"])


def test_none_sends_client_id_only() -> None:
    """Auth method none (public client) sends client_id in the body and no secret."""
    fields = form(build_refresh_request(provider(AuthMethod.NONE), Secret(REFRESH)))
    assert fields["client_id"] == ["my-client"]
    assert "client_secret" not in fields


def test_none_sends_no_authorization_header() -> None:
    """Auth method none sends no Authorization header."""
    assert "authorization" not in build_refresh_request(provider(AuthMethod.NONE), Secret(REFRESH)).headers


def test_secret_from_environment_variable_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With client_secret_env the secret is read from that environment variable."""
    monkeypatch.setenv(ENV_VAR, "from-the-environment")
    request = build_refresh_request(provider(client_secret_env=ENV_VAR), Secret(REFRESH))
    assert basic_pair(request) == "my-client:from-the-environment"


def test_secret_from_environment_is_read_at_request_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variable is read when the request is built, so a rotated secret is picked up."""
    p = provider(AuthMethod.CLIENT_SECRET_POST, client_secret_env=ENV_VAR)
    monkeypatch.setenv(ENV_VAR, "first")
    build_refresh_request(p, Secret(REFRESH))
    monkeypatch.setenv(ENV_VAR, "second")
    assert form(build_refresh_request(p, Secret(REFRESH)))["client_secret"] == ["second"]


@pytest.mark.parametrize("value", [None, ""])
def test_unset_secret_environment_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """An unset or empty client_secret_env variable raises ConfigurationError naming the variable."""
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ConfigurationError, match=ENV_VAR):
        build_refresh_request(provider(client_secret_env=ENV_VAR), Secret(REFRESH))


def test_unset_secret_error_does_not_show_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The missing-secret error carries neither the refresh token nor any other secret value."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ConfigurationError) as info:
        build_refresh_request(provider(client_secret_env=ENV_VAR), Secret(REFRESH))
    assert REFRESH not in str(info.value)
    assert REFRESH not in repr(info.value)


def test_basic_without_any_secret_is_a_configuration_error() -> None:
    """client_secret_basic with no stored or env secret raises ConfigurationError, not AssertionError."""
    p = Provider(name="p", token_url=TOKEN_URL, client_id="c", auth_method=AuthMethod.CLIENT_SECRET_BASIC)
    with pytest.raises(ConfigurationError):
        build_refresh_request(p, Secret(REFRESH))


@pytest.mark.parametrize("auth", list(AuthMethod))
def test_request_repr_shows_no_secret(auth: AuthMethod) -> None:
    """repr of the request and its headers shows neither the refresh token nor the client secret."""
    request = build_refresh_request(provider(auth), Secret(REFRESH))
    text = repr(request) + repr(request.headers)
    assert REFRESH not in text
    assert CLIENT_SECRET not in text
