"""Authorization-server metadata: RFC 8414, and OpenID Connect Discovery 1.0 as its fallback.

`discover` fetches the document for an issuer (RFC 8414 §3.1 well-known URL first, then the OIDC one) and
`parse_metadata` validates it: the ``issuer`` must be the one asked for (§3.3, against mix-up and
impersonation), the token endpoint an absolute https URL, the lists lists of strings. Anything else is a
`ConfigurationError` saying which document and which member is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from grantkeeper._exceptions import ConfigurationError, ProviderUnavailable, without_controls
from grantkeeper.model import AuthMethod
from grantkeeper.model.provider import check_endpoint
from grantkeeper.protocol.answers import MAX_BODY_BYTES
from grantkeeper.tokens import transport
from grantkeeper.tokens.transport import Network

__all__ = ["Metadata", "choose_auth_method", "discover", "metadata_urls", "parse_metadata"]

#: RFC 8414 §2: when the member is omitted, the default is client_secret_basic.
_DEFAULT_AUTH_METHODS = ("client_secret_basic",)


@dataclass(frozen=True, slots=True)
class Metadata:
    """What grantkeeper uses from an authorization server's metadata document."""

    issuer: str
    token_endpoint: str
    auth_methods: tuple[str, ...]  # token_endpoint_auth_methods_supported (RFC 8414 default applied)
    grant_types: tuple[str, ...] | None  # grant_types_supported; None when the document omits it
    signing_algs: tuple[str, ...]  # token_endpoint_auth_signing_alg_values_supported
    authorization_endpoint: str | None
    revocation_endpoint: str | None  # RFC 8414 §2 / RFC 7009
    device_authorization_endpoint: str | None  # RFC 8628 §4
    source: str  # the URL the document was read from

    @property
    def refresh_supported(self) -> bool | None:
        """Whether the server lists the refresh_token grant; None when it does not say."""
        return None if self.grant_types is None else "refresh_token" in self.grant_types


def _check_url(value: object, what: str, where: str, insecure_http: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {what} is missing or not a string")
    check_endpoint(where, what, value, insecure_http=insecure_http)
    if urlsplit(value).fragment:
        raise ConfigurationError(f"{where}: {what} must not carry a #fragment")
    return value


def metadata_urls(issuer: str, *, insecure_http: bool = False) -> list[str]:
    """Where the metadata of `issuer` may live: RFC 8414 §3.1 (well-known segment before the issuer's path),
    then OpenID Connect Discovery §4 (appended to the issuer)."""
    _check_url(issuer, "the issuer", "--issuer", insecure_http)
    parts = urlsplit(issuer)
    if parts.query:
        raise ConfigurationError("--issuer: an issuer has no query component (RFC 8414 §2)")
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    oidc = urlunsplit((parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", ""))
    return [rfc8414, oidc]


def _strings(document: dict[str, object], key: str, where: str) -> tuple[str, ...] | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def parse_metadata(body: bytes, *, issuer: str, source: str, insecure_http: bool = False) -> Metadata:
    """Validate a metadata document read from `source` for `issuer`."""
    where = f"metadata at {source}"
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ConfigurationError(f"{where} is not JSON; check the issuer URL") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    stated = document.get("issuer")
    if stated != issuer:
        # Metadata is public (no token can be in it), so the issuer is shown as is, minus control characters.
        shown = without_controls(stated)[:200] if isinstance(stated, str) else "no issuer"
        raise ConfigurationError(
            f"{where} names issuer {shown!r}, not {issuer!r}; RFC 8414 requires them to be identical. If that is "
            "the server you mean, run again with exactly that --issuer"
        )
    token_endpoint = _check_url(document.get("token_endpoint"), "token_endpoint", where, insecure_http)
    authorization_endpoint = document.get("authorization_endpoint")
    if authorization_endpoint is not None:
        authorization_endpoint = _check_url(authorization_endpoint, "authorization_endpoint", where, insecure_http)
    revocation_endpoint = document.get("revocation_endpoint")
    if revocation_endpoint is not None:
        revocation_endpoint = _check_url(revocation_endpoint, "revocation_endpoint", where, insecure_http)
    device_endpoint = document.get("device_authorization_endpoint")
    if device_endpoint is not None:
        device_endpoint = _check_url(device_endpoint, "device_authorization_endpoint", where, insecure_http)
    return Metadata(
        issuer=issuer,
        token_endpoint=token_endpoint,
        auth_methods=_strings(document, "token_endpoint_auth_methods_supported", where) or _DEFAULT_AUTH_METHODS,
        grant_types=_strings(document, "grant_types_supported", where),
        signing_algs=_strings(document, "token_endpoint_auth_signing_alg_values_supported", where) or (),
        authorization_endpoint=authorization_endpoint,
        revocation_endpoint=revocation_endpoint,
        device_authorization_endpoint=device_endpoint,
        source=source,
    )


def discover(
    issuer: str,
    *,
    http: httpx.Client | None = None,
    timeout: float = 10.0,
    insecure_http: bool = False,
    network: Network | None = None,
) -> Metadata:
    """Fetch and validate the metadata of `issuer`. Redirects are not followed: the document must be served at
    the well-known URL itself.

    Raises:
        ConfigurationError: no document at either URL, or the document is not valid metadata for `issuer`.
        TLSVerificationFailed: the server's certificate did not verify (give `network` a CA bundle).
        ProviderUnavailable: the server could not be reached or answered 5xx; retry later.
    """
    urls = metadata_urls(issuer, insecure_http=insecure_http)
    client = http or transport.client(network, timeout=timeout)
    tried: list[str] = []
    try:
        for url in urls:
            try:
                with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                    body = b""
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            raise ConfigurationError(f"metadata at {url} is larger than {MAX_BODY_BYTES} bytes")
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # IDNA: a host label over 63 chars
                if failed := transport.tls_failure(exc):
                    raise failed from None
                raise ProviderUnavailable(
                    f"could not read metadata from {url} ({type(exc).__name__}); check the issuer URL and retry"
                ) from None
            if response.status_code == 200:
                return parse_metadata(body, issuer=issuer, source=url, insecure_http=insecure_http)
            if response.status_code >= 500:
                raise ProviderUnavailable(f"metadata at {url} answered HTTP {response.status_code}; retry later")
            tried.append(f"{url} (HTTP {response.status_code})")
    finally:
        if http is None:
            client.close()
    raise ConfigurationError(
        f"no authorization-server metadata for {issuer}: tried {', '.join(tried)}. Check the issuer URL, or add the "
        "provider with 'grantkeeper provider add --token-url'"
    )


def choose_auth_method(
    supported: Sequence[str], *, requested: AuthMethod | None, has_secret: bool, has_key: bool
) -> AuthMethod:
    """The client authentication to use: the requested one if the server supports it, else the best one the
    server supports for the credentials given (a key: private_key_jwt; a secret: basic, then post; none: none)."""
    if requested is not None:
        if requested.value not in supported:
            raise ConfigurationError(
                f"the server does not list {requested.value} among its token endpoint auth methods "
                f"({', '.join(supported)}); choose one of those"
            )
        return requested
    if has_key:
        preference = [AuthMethod.PRIVATE_KEY_JWT]
    elif has_secret:
        preference = [AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST]
    else:
        preference = [AuthMethod.NONE]
    for method in preference:
        if method.value in supported:
            return method
    given = "a private key" if has_key else "a client secret" if has_secret else "no client credentials"
    raise ConfigurationError(
        f"the server's token endpoint accepts {', '.join(supported)}, none of which works with {given}; give "
        "credentials for one of them (--client-secret-env, --client-secret-stdin or --private-key-file)"
    )
