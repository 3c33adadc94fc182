"""Build the refresh request (RFC 6749 §6) for a provider's client authentication method. Pure."""

from __future__ import annotations

import base64
import functools
from urllib.parse import quote_plus

import httpx

from grantkeeper._secrets import Secret
from grantkeeper.model import AuthMethod, Provider

__all__ = ["USER_AGENT", "build_refresh_request"]

USER_AGENT = "grantkeeper/0.1"


def build_refresh_request(provider: Provider, refresh_token: Secret) -> httpx.Request:
    """The POST to the token endpoint. The returned request holds secrets: never log its body or headers."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    secret = provider.resolve_secret()
    if provider.auth_method is AuthMethod.CLIENT_SECRET_BASIC:
        assert secret is not None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Base64.
        pair = f"{quote_plus(provider.client_id)}:{quote_plus(secret.reveal())}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    elif provider.auth_method is AuthMethod.CLIENT_SECRET_POST:
        assert secret is not None
        form["client_id"] = provider.client_id
        form["client_secret"] = secret.reveal()
    else:
        form["client_id"] = provider.client_id
    return httpx.Request("POST", _parsed_url(provider.token_url), data=form, headers=headers)


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """Token URLs are few and fixed; parsing one costs more than a refresh's crypto, so parse it once."""
    return httpx.URL(url)
