"""Build requests to the provider's endpoints with its client authentication method: the refresh request
(RFC 6749 §6), and any other client-authenticated POST (code exchange, RFC 7009 revocation) through
`build_client_request`.

Pure except for what the method itself needs at send time: the client secret's environment variable, or the
private key file and the clock for a ``private_key_jwt`` assertion.
"""

from __future__ import annotations

import base64
import functools
import time
from urllib.parse import quote_plus

import httpx

from grantkeeper._secrets import Secret
from grantkeeper.model import AuthMethod, Provider
from grantkeeper.tokens.assertion import ASSERTION_TYPE, client_assertion
from grantkeeper.tokens.transport import NETWORK, Network

__all__ = ["USER_AGENT", "build_client_request", "build_refresh_request"]

USER_AGENT = "grantkeeper/0.1"


def build_refresh_request(
    provider: Provider, refresh_token: Secret, *, scopes: tuple[str, ...] = (), now: float | None = None
) -> httpx.Request:
    """The POST to the token endpoint. The returned request holds secrets: never log its body or headers.

    `scopes` are sent only for providers with ``send_scope`` (some servers require ``scope`` on refresh); RFC
    6749 §6 lets a refresh ask for at most the granted scope, so sending the grant's own scopes is always safe.
    """
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
    if provider.send_scope and scopes:
        form["scope"] = " ".join(scopes)
    return build_client_request(provider, form, now=now)


def build_client_request(
    provider: Provider, form: dict[str, str], *, url: str | None = None, now: float | None = None
) -> httpx.Request:
    """A POST of `form` to `url` (default: the token endpoint) with the provider's client authentication
    (RFC 6749 §2.3). The returned request holds secrets: never log its body or headers."""
    form = dict(form)
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    method = provider.auth_method
    secret = provider.resolve_secret()
    if method is AuthMethod.CLIENT_SECRET_BASIC:
        assert secret is not None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Base64.
        pair = f"{quote_plus(provider.client_id)}:{quote_plus(secret.reveal())}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    elif method is AuthMethod.CLIENT_SECRET_POST:
        assert secret is not None
        form["client_id"] = provider.client_id
        form["client_secret"] = secret.reveal()
    elif method is AuthMethod.PRIVATE_KEY_JWT:
        form["client_id"] = provider.client_id
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(provider, now=time.time() if now is None else now)
    else:
        form["client_id"] = provider.client_id
    return httpx.Request("POST", _parsed_url(url or provider.token_url), data=form, headers=headers,
                         extensions={NETWORK: Network.of(provider)})  # fmt: skip


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """Token URLs are few and fixed; parsing one costs more than a refresh's crypto, so parse it once."""
    return httpx.URL(url)
