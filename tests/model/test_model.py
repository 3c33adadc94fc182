"""Plain data: Provider validation (I7) and when a grant's access token may be served (I4)."""

from __future__ import annotations

import math

import pytest

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.model import AttemptState, AuthMethod, Grant, GrantState, Provider, check_name

URL = "https://auth.example.com/oauth/token"
CLIENT_SECRET = "client-secret-value-0123456789"


def provider(**options: object) -> Provider:
    fields: dict[str, object] = {"name": "acme", "token_url": URL, "client_id": "my-client"}
    fields.update(options)
    return Provider(**fields)  # type: ignore[arg-type]


def config_error(**options: object) -> str:
    """The message of the ConfigurationError that building a provider with `options` raises."""
    with pytest.raises(ConfigurationError) as info:
        provider(**options)
    return str(info.value)


# --- Provider validation ------------------------------------------------------------------------------------


def test_valid_provider_is_accepted() -> None:
    """A provider with an https URL, client id and stored secret is built without error."""
    p = provider(client_secret=Secret(CLIENT_SECRET))
    assert (p.name, p.token_url, p.auth_method) == ("acme", URL, AuthMethod.CLIENT_SECRET_BASIC)


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://auth.example.com/token", "https://", "/oauth/token", "auth.example.com/token", ""]
)
def test_bad_token_url_is_a_configuration_error(url: str) -> None:
    """A token URL that is not an absolute http(s) URL raises ConfigurationError saying so."""
    message = config_error(token_url=url)
    assert "must be an absolute URL" in message
    assert "'acme'" in message


@pytest.mark.parametrize("url", ["https://[::1/token", "https://[not-an-ip]/token"])
def test_unparsable_token_url_is_a_configuration_error(url: str) -> None:
    """A token URL that urlsplit cannot parse (broken IPv6 literal) raises ConfigurationError, not ValueError."""
    config_error(token_url=url)


@pytest.mark.parametrize("host", ["auth.example.com", "10.0.0.5", "127.0.0.1.nip.io", "localhost.example.com"])
def test_plain_http_off_loopback_is_a_configuration_error(host: str) -> None:
    """Plain http to a non-loopback host raises ConfigurationError naming the host and asking for https."""
    message = config_error(token_url=f"http://{host}/token")
    assert host in message
    assert "https" in message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]:9000/token"])
def test_plain_http_on_loopback_is_allowed(url: str) -> None:
    """Plain http is allowed on loopback (the provider simulator, local servers)."""
    assert provider(token_url=url).token_url == url


def test_empty_client_id_is_a_configuration_error() -> None:
    """An empty client id raises ConfigurationError saying the client id must not be empty."""
    assert "client id" in config_error(client_id="")


def test_both_secret_forms_is_a_configuration_error() -> None:
    """A stored secret and a secret env var together raise ConfigurationError saying "not both"."""
    assert "not both" in config_error(client_secret=Secret(CLIENT_SECRET), client_secret_env="ACME_SECRET")


def test_both_secret_forms_error_does_not_show_the_secret() -> None:
    """The "not both" error does not contain the client secret."""
    assert CLIENT_SECRET not in config_error(client_secret=Secret(CLIENT_SECRET), client_secret_env="ACME_SECRET")


@pytest.mark.parametrize("secret", [{"client_secret": Secret(CLIENT_SECRET)}, {"client_secret_env": "ACME_SECRET"}])
def test_auth_none_with_a_secret_is_a_configuration_error(secret: dict[str, object]) -> None:
    """Auth method none with any client secret raises ConfigurationError explaining public clients."""
    message = config_error(auth_method=AuthMethod.NONE, **secret)
    assert "'none'" in message
    assert CLIENT_SECRET not in message


@pytest.mark.parametrize("grace", [-1.0, 366 * 86400.0 + 1, math.inf, math.nan])
def test_reuse_grace_out_of_range_is_a_configuration_error(grace: float) -> None:
    """A reuse grace below 0, above a year, infinite or NaN raises ConfigurationError naming the setting."""
    assert "reuse grace" in config_error(reuse_grace=grace)


@pytest.mark.parametrize("grace", [0.0, 10.0, 366 * 86400.0])
def test_reuse_grace_in_range_is_accepted(grace: float) -> None:
    """A reuse grace from 0 to a year is accepted."""
    assert provider(reuse_grace=grace).reuse_grace == grace


@pytest.mark.parametrize("skew", [-0.1, 3600.1, math.inf, math.nan])
def test_skew_out_of_range_is_a_configuration_error(skew: float) -> None:
    """A skew below 0, above an hour, infinite or NaN raises ConfigurationError naming the setting."""
    assert "skew" in config_error(skew=skew)


@pytest.mark.parametrize("skew", [0.0, 30.0, 3600.0])
def test_skew_in_range_is_accepted(skew: float) -> None:
    """A skew from 0 to an hour is accepted."""
    assert provider(skew=skew).skew == skew


@pytest.mark.parametrize("lifetime", [0.0, -1.0, 366 * 86400.0 + 1, math.nan])
def test_default_lifetime_out_of_range_is_a_configuration_error(lifetime: float) -> None:
    """A default access-token lifetime that is not positive and at most a year raises ConfigurationError."""
    assert "lifetime" in config_error(default_expires_in=lifetime)


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "slash/name", "x" * 201, "new\nline"])
def test_bad_provider_name_is_a_configuration_error(name: str) -> None:
    """A provider name outside 1-200 of letters, digits and - _ . : @ raises ConfigurationError."""
    assert "provider name" in config_error(name=name)


@pytest.mark.parametrize("name", ["a", "acme-prod_2.eu:tenant@x", "x" * 200])
def test_plain_names_are_accepted(name: str) -> None:
    """Names of letters, digits and - _ . : @ up to 200 characters are accepted."""
    check_name(name, "grant")


def test_provider_repr_does_not_show_the_client_secret() -> None:
    """repr(Provider) masks the stored client secret."""
    assert CLIENT_SECRET not in repr(provider(client_secret=Secret(CLIENT_SECRET)))


def test_resolve_secret_returns_the_stored_secret() -> None:
    """resolve_secret() returns the stored client secret."""
    assert provider(client_secret=Secret(CLIENT_SECRET)).resolve_secret() == Secret(CLIENT_SECRET)


def test_resolve_secret_is_none_for_public_clients() -> None:
    """resolve_secret() is None for auth method none."""
    assert provider(auth_method=AuthMethod.NONE).resolve_secret() is None


def test_resolve_secret_without_any_secret_is_a_configuration_error() -> None:
    """A confidential client with no secret at all raises ConfigurationError saying how to add one."""
    with pytest.raises(ConfigurationError, match="no client secret"):
        provider(auth_method=AuthMethod.CLIENT_SECRET_POST).resolve_secret()


# --- Grant.usable_until / access_usable ---------------------------------------------------------------------


def grant(
    *, access: str | None = "AT-access-token-0123456789", expires_at: float | None = 10_000.0,
    updated_at: float | None = 6_400.0,
) -> Grant:  # fmt: skip
    return Grant(
        name="g", provider="acme", refresh_token=Secret("RT-refresh-token-0123456789"), refresh_fp="fp_1",
        access_token=Secret(access) if access is not None else None, access_fp="fp_2" if access else None,
        expires_at=expires_at, scopes=(), generation=1, state=GrantState.ACTIVE, updated_at=updated_at,
    )  # fmt: skip


def test_usable_until_is_expiry_minus_skew() -> None:
    """For a long-lived token the access token is served until expires_at - skew."""
    assert grant(expires_at=10_000.0, updated_at=6_400.0).usable_until(30.0) == 9_970.0


def test_skew_is_capped_at_half_the_lifetime() -> None:
    """For a short-lived token the skew is capped at half its lifetime (counted from updated_at)."""
    assert grant(expires_at=1_060.0, updated_at=1_000.0).usable_until(300.0) == 1_030.0


def test_skew_cap_does_not_apply_when_the_skew_is_small() -> None:
    """The cap only lowers the skew: a skew under half the lifetime is used as is."""
    assert grant(expires_at=1_060.0, updated_at=1_000.0).usable_until(10.0) == 1_050.0


def test_full_skew_without_updated_at() -> None:
    """Without updated_at the lifetime is unknown and the full skew applies."""
    assert grant(expires_at=1_060.0, updated_at=None).usable_until(300.0) == 760.0


def test_expiry_before_update_gives_no_skew() -> None:
    """A token that was already expired when stored gets skew 0, never a negative one."""
    assert grant(expires_at=900.0, updated_at=1_000.0).usable_until(30.0) == 900.0


def test_usable_until_is_none_without_access_token() -> None:
    """Without an access token there is nothing to serve: usable_until is None."""
    assert grant(access=None).usable_until(30.0) is None


def test_usable_until_is_none_without_expiry() -> None:
    """Without an expiry, usable_until is None."""
    assert grant(expires_at=None).usable_until(30.0) is None


def test_access_not_usable_without_token() -> None:
    """access_usable is false when there is no access token, even with a future expiry."""
    assert not grant(access=None, expires_at=1e12).access_usable(now=0.0, skew=0.0)


def test_access_not_usable_without_expiry() -> None:
    """access_usable is false when the expiry is unknown."""
    assert not grant(expires_at=None).access_usable(now=0.0, skew=0.0)


def test_access_usable_before_the_skewed_expiry() -> None:
    """access_usable is true while now is before expires_at - skew."""
    assert grant(expires_at=10_000.0).access_usable(now=9_969.0, skew=30.0)


@pytest.mark.parametrize("now", [9_970.0, 9_999.0, 10_000.0, 20_000.0])
def test_access_not_usable_from_the_skewed_expiry_on(now: float) -> None:
    """access_usable is false from expires_at - skew on (I4: never served past expires_at - skew)."""
    assert not grant(expires_at=10_000.0).access_usable(now=now, skew=30.0)


def test_grant_repr_shows_no_tokens() -> None:
    """repr(Grant) shows fingerprints but no token values."""
    text = repr(grant())
    assert "AT-access-token-0123456789" not in text
    assert "RT-refresh-token-0123456789" not in text


@pytest.mark.parametrize("state", list(AttemptState))
def test_maybe_spent_only_for_open_and_ambiguous(state: AttemptState) -> None:
    """Only open and ambiguous attempts may have spent their token without storing the successor."""
    assert state.maybe_spent == (state in (AttemptState.OPEN, AttemptState.AMBIGUOUS))
