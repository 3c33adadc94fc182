"""Build requests to the provider's endpoints with its client authentication method: the refresh request
(RFC 6749 §6), and any other client-authenticated POST (code exchange, RFC 7009 revocation) through
`build_client_request`; and the refresh request as plain parts (`refresh_post`) for the aiohttp sender.

Pure except for what the method itself needs at send time: the client secret's environment variable, or the
private key file and the clock for a ``private_key_jwt`` assertion.
"""

from __future__ import annotations

import base64
import functools
import time
from dataclasses import dataclass
from urllib.parse import quote_plus, urlencode

import httpx

from grantkeeper._secrets import Secret
from grantkeeper.model import AuthMethod, Provider
from grantkeeper.tokens.assertion import ASSERTION_TYPE, client_assertion
from grantkeeper.tokens.transport import NETWORK, Network

__all__ = ["FORM_TYPE", "USER_AGENT", "FormPost", "build_client_request", "build_refresh_request", "refresh_post"]

USER_AGENT = "grantkeeper/0.1"
FORM_TYPE = "application/x-www-form-urlencoded"


def build_refresh_request(
    provider: Provider, refresh_token: Secret, *, scopes: tuple[str, ...] = (), now: float | None = None
) -> httpx.Request:
    """The POST to the token endpoint. The returned request holds secrets: never log its body or headers.

    `scopes` are sent only for providers with ``send_scope`` (some servers require ``scope`` on refresh); RFC
    6749 §6 lets a refresh ask for at most the granted scope, so sending the grant's own scopes is always safe.
    """
    return build_client_request(provider, _refresh_form(provider, refresh_token, scopes), now=now)


def refresh_post(
    provider: Provider, refresh_token: Secret, *, scopes: tuple[str, ...] = (), now: float | None = None
) -> FormPost:
    """`build_refresh_request`'s request as plain parts, for a client that is not httpx (the aiohttp sender): the
    same headers in the same order and the same body bytes, without building an `httpx.Request` only for the
    client to read it back (a tenth of a grouped refresh's CPU). Holds secrets: never log it."""
    form, headers = _authenticated(provider, _refresh_form(provider, refresh_token, scopes), now)
    headers.append(("Content-Type", FORM_TYPE))
    return FormPost(_url_text(provider.token_url), tuple(headers), _encoded(form), Network.of(provider))


def build_client_request(
    provider: Provider, form: dict[str, str], *, url: str | None = None, now: float | None = None
) -> httpx.Request:
    """A POST of `form` to `url` (default: the token endpoint) with the provider's client authentication
    (RFC 6749 §2.3). The returned request holds secrets: never log its body or headers."""
    form, headers = _authenticated(provider, form, now)
    return httpx.Request("POST", _parsed_url(url or provider.token_url), data=form, headers=headers,
                         extensions={NETWORK: Network.of(provider)})  # fmt: skip


@dataclass(frozen=True, slots=True, repr=False)
class FormPost:
    """A form POST as it goes on the wire, for clients other than httpx: `headers` are those httpx would send
    except what a client writes itself from the URL and body (Host, Content-Length)."""

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    network: Network

    def __repr__(self) -> str:  # the body and headers hold secrets
        return f"FormPost(url={self.url!r}, {len(self.body)} bytes)"


def _refresh_form(provider: Provider, refresh_token: Secret, scopes: tuple[str, ...]) -> dict[str, str]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
    if provider.send_scope and scopes:
        form["scope"] = " ".join(scopes)
    return form


def _authenticated(
    provider: Provider, form: dict[str, str], now: float | None
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """`form` and the request headers with the provider's client authentication added."""
    form = dict(form)
    headers = [("Accept", "application/json"), ("User-Agent", USER_AGENT)]
    method = provider.auth_method
    secret = provider.resolve_secret()
    if method is AuthMethod.CLIENT_SECRET_BASIC:
        assert secret is not None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Base64.
        pair = f"{quote_plus(provider.client_id)}:{quote_plus(secret.reveal())}"
        headers.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode("ascii")))
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
    return form, headers


def _encoded(form: dict[str, str]) -> bytes:
    """The form's body exactly as httpx encodes ``data=form`` (``urlencode``, UTF-8)."""
    return urlencode(list(form.items()), doseq=True).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """Token URLs are few and fixed; parsing one costs more than a refresh's crypto, so parse it once."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=256)
def _url_text(url: str) -> str:
    """The URL as httpx normalizes it (what `build_client_request` sends to), so both builders send to one URL."""
    return str(_parsed_url(url))
