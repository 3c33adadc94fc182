"""Provider: a token endpoint, how we authenticate to it, and how it behaves."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret

__all__ = ["RESERVED_AUTHORIZE_PARAMS", "AuthMethod", "Provider", "RotationMode", "check_endpoint", "check_proxy_url"]


class AuthMethod(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    PRIVATE_KEY_JWT = "private_key_jwt"  # RFC 7523 §2.2: a JWT signed with the client's private key
    NONE = "none"


class RotationMode(StrEnum):
    ALWAYS = "always"  # every refresh returns a replacement; the old one dies (after any grace)
    CONDITIONAL = "conditional"  # sometimes a replacement; always keep the latest returned
    NEVER = "never"  # the same refresh token is reused


_MAX_GRACE = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class Provider:
    """An authorization server as grantkeeper talks to it.

    The client secret is either stored (encrypted at rest) in ``client_secret`` or referenced by the name of
    an environment variable in ``client_secret_env``, resolved at refresh time.
    """

    name: str
    token_url: str
    client_id: str
    client_secret: Secret | None = None
    client_secret_env: str | None = None
    auth_method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC
    rotation: RotationMode = RotationMode.ALWAYS
    reuse_grace: float = 0.0
    skew: float = 30.0
    default_expires_in: float = 3600.0
    #: The refresh token dies if unused this long (sliding); `Keeper.keepalive` refreshes ahead of it.
    refresh_idle_ttl: float | None = None
    #: The consent dies this long after it was given, whatever we do; `keepalive` warns ahead of it.
    refresh_absolute_ttl: float | None = None
    #: private_key_jwt: PEM file holding the RSA or EC P-256 private key, read at refresh time (never stored).
    private_key_file: str | None = None
    #: private_key_jwt: the ``kid`` the provider knows the public key by, if it needs one.
    key_id: str | None = None
    #: private_key_jwt: the assertion's ``aud``; None means the token endpoint (RFC 7523 §3).
    jwt_audience: str | None = None
    #: Send the grant's scopes with every refresh (providers that require ``scope`` on refresh).
    send_scope: bool = False
    #: The profile this provider was made from (provenance only; every value above is stored as given).
    profile: str | None = None
    #: The authorization endpoint (RFC 6749 §3.1), for `grantkeeper connect`; None if unknown.
    authorization_url: str | None = None
    #: The revocation endpoint (RFC 7009), for `grantkeeper grant revoke`; None if the provider has none.
    revocation_url: str | None = None
    #: The device authorization endpoint (RFC 8628 §3.1), for `grantkeeper connect --device`; None if unknown.
    device_authorization_url: str | None = None
    #: Extra authorization-request parameters for `grantkeeper connect` (e.g. ``prompt=consent``), on top of
    #: the profile's; pairs so the provider stays immutable and hashable.
    authorize_params: tuple[tuple[str, str], ...] = ()
    #: The base URL of the provider's API, for the service's proxy (``/v1/proxy/{grant}/{path}``).
    api_base_url: str | None = None
    #: A PEM file of CA certificates to verify this provider's TLS certificates with, instead of the system's.
    ca_bundle: str | None = None
    #: An HTTP(S) proxy for this provider's endpoints (no credentials in it: those belong in $HTTPS_PROXY).
    proxy: str | None = None
    #: Allow plain http to hosts other than loopback (a test rig behind a trusted network; never production).
    insecure_http: bool = False

    def __post_init__(self) -> None:
        check_name(self.name, "provider")
        for label, url in (
            ("token", self.token_url),
            ("authorization", self.authorization_url),
            ("revocation", self.revocation_url),
            ("device authorization", self.device_authorization_url),
            ("API base", self.api_base_url),
        ):
            if url is not None:
                check_endpoint(f"provider {self.name!r}", label, url, insecure_http=self.insecure_http)
        self._check_network_options()
        if not self.client_id:
            raise ConfigurationError(f"provider {self.name!r}: client id must not be empty")
        if self.client_secret is not None and self.client_secret_env is not None:
            raise ConfigurationError(
                f"provider {self.name!r}: give the client secret either stored or by environment variable, not both"
            )
        if self.auth_method in (AuthMethod.NONE, AuthMethod.PRIVATE_KEY_JWT) and (
            self.client_secret or self.client_secret_env
        ):
            raise ConfigurationError(
                f"provider {self.name!r}: auth method {self.auth_method.value!r} sends no client secret; drop the "
                "client secret or choose client_secret_basic / client_secret_post"
            )
        self._check_key_options()
        if not 0 <= self.reuse_grace <= _MAX_GRACE:
            raise ConfigurationError(
                f"provider {self.name!r}: reuse grace must be between 0 and {_MAX_GRACE:.0f} seconds"
            )
        if not 0 <= self.skew <= 3600:
            raise ConfigurationError(f"provider {self.name!r}: skew must be between 0 and 3600 seconds")
        for label, ttl in (("idle", self.refresh_idle_ttl), ("absolute", self.refresh_absolute_ttl)):
            if ttl is not None and not ttl > 0:
                raise ConfigurationError(f"provider {self.name!r}: refresh-token {label} lifetime must be positive")
        if not 0 < self.default_expires_in <= _MAX_GRACE:
            raise ConfigurationError(
                f"provider {self.name!r}: default access-token lifetime must be positive and at most a year"
            )

    def _check_network_options(self) -> None:
        for key, _ in self.authorize_params:
            if not key or not key.isascii() or not key.isprintable() or key in RESERVED_AUTHORIZE_PARAMS:
                raise ConfigurationError(
                    f"provider {self.name!r}: authorization parameter {key!r} cannot be set here (grantkeeper sets "
                    f"{', '.join(sorted(RESERVED_AUTHORIZE_PARAMS))} itself)"
                )
        if self.ca_bundle is not None and not os.path.isabs(self.ca_bundle):
            raise ConfigurationError(f"provider {self.name!r}: the CA bundle must be an absolute path to a PEM file")
        if self.proxy is not None:
            check_proxy_url(f"provider {self.name!r}", self.proxy)

    def _check_key_options(self) -> None:
        uses_jwt = self.auth_method is AuthMethod.PRIVATE_KEY_JWT
        if uses_jwt and not self.private_key_file:
            raise ConfigurationError(
                f"provider {self.name!r} uses private_key_jwt but has no private key file; give --private-key-file "
                "with the PEM file of the key registered with the provider"
            )
        if not uses_jwt and (self.private_key_file or self.key_id or self.jwt_audience):
            raise ConfigurationError(
                f"provider {self.name!r}: a private key file, key id or JWT audience only applies to private_key_jwt; "
                f"drop them or choose --auth-method private_key_jwt"
            )
        if self.jwt_audience is not None and urlsplit(self.jwt_audience).scheme not in ("https", "http"):
            raise ConfigurationError(
                f"provider {self.name!r}: the JWT audience must be the issuer or token endpoint URL; "
                f"got {self.jwt_audience!r}"
            )

    def resolve_secret(self) -> Secret | None:
        """The client secret to send, reading the environment variable now if that is where it lives."""
        if self.auth_method in (AuthMethod.NONE, AuthMethod.PRIVATE_KEY_JWT):
            return None
        if self.client_secret is not None:
            return self.client_secret
        if self.client_secret_env is not None:
            value = os.environ.get(self.client_secret_env)
            if not value:
                raise ConfigurationError(
                    f"provider {self.name!r} reads its client secret from ${self.client_secret_env}, "
                    "which is not set; export it and run again"
                )
            return Secret(value)
        raise ConfigurationError(
            f"provider {self.name!r} uses {self.auth_method.value} but has no client secret; run "
            "'grantkeeper provider add' again with --client-secret-env or --client-secret-stdin"
        )


#: Parameters `connect` computes itself; a stored value would break PKCE, state or the redirect.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {"client_id", "redirect_uri", "response_type", "state", "code_challenge", "code_challenge_method", "scope"}
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_endpoint(where: str, label: str, url: str, *, insecure_http: bool = False) -> None:
    """An endpoint is an absolute https URL; plain http only on loopback, or anywhere with `insecure_http`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ConfigurationError(f"{where}: {label} URL {url!r} cannot be parsed") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(
            f"{where}: {label} URL must be an absolute URL: https://host/..., or http:// on loopback "
            f"(127.0.0.1, localhost, ::1); got {url!r}"
        )
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS and not insecure_http:
        raise ConfigurationError(
            f"{where}: {label} URL uses plain http to {host}: only https is accepted, or http on loopback "
            "(127.0.0.1, localhost, ::1); give --insecure-http to allow plain http to other hosts (tokens then "
            "cross the network unencrypted)"
        )


def check_proxy_url(where: str, url: str) -> None:
    """A proxy is http:// or https://host[:port], without credentials (they would be stored in plaintext)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise ConfigurationError(f"{where}: the proxy URL cannot be parsed; give http://host:port") from None
    if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(f"{where}: the proxy must be http://host:port or https://host:port")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{where}: the proxy URL carries credentials, which would be stored in plaintext; give the proxy "
            "without them and put the credentials in $HTTPS_PROXY / $HTTP_PROXY where grantkeeper runs"
        )


def check_name(name: str, kind: str) -> None:
    """Names are identifiers used on the command line and in key derivation: keep them plain."""
    if not name or len(name) > 200 or not all(c.isalnum() or c in "-_.:@" for c in name):
        raise ConfigurationError(f"{kind} name {name!r} is not valid: use 1-200 letters, digits and - _ . : @")
