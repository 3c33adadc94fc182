"""RFC 7523 §2.2 client assertions for ``private_key_jwt``: a short-lived JWT signed with the client's key.

The key is read from its PEM file at every refresh (refreshes are rare; nothing secret stays cached). RS256 for
RSA keys (2048 bits or more), ES256 for EC P-256 keys (RFC 7518 §3.4: the signature is R || S, not DER).
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.model import Provider

__all__ = ["ASSERTION_LIFETIME", "ASSERTION_TYPE", "client_assertion", "load_signing_key"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds the assertion is valid: long enough for one request, short enough that a copy is soon useless.
ASSERTION_LIFETIME = 60
_MIN_RSA_BITS = 2048

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_signing_key(provider: Provider) -> tuple[SigningKey, str]:
    """The provider's private key and its JWS algorithm. Errors name the file, never its content."""
    path = provider.private_key_file
    if not path:
        raise ConfigurationError(f"provider {provider.name!r} uses private_key_jwt but names no private key file")
    where = f"provider {provider.name!r}: private key file {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where} cannot be read ({exc.strerror}); check the path and permissions") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"{where} is encrypted; grantkeeper reads unencrypted PEM keys only: protect the file with permissions "
            "(chmod 600) instead, e.g. `openssl pkey -in key.pem -out plain.pem`"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"{where} is not a PEM private key (expected '-----BEGIN PRIVATE KEY-----' with an RSA or EC P-256 key)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigurationError(f"{where} holds a {key.key_size}-bit RSA key; RS256 needs 2048 bits or more")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ConfigurationError(f"{where} holds a key grantkeeper cannot sign with; use RSA (RS256) or EC P-256 (ES256)")


def _sign(key: SigningKey, signing_input: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def client_assertion(provider: Provider, *, now: float) -> str:
    """A signed JWT authenticating the client: iss = sub = client id, aud per profile, fresh jti, short exp."""
    key, alg = load_signing_key(provider)
    header: dict[str, str] = {"alg": alg, "typ": "JWT"}
    if provider.key_id:
        header["kid"] = provider.key_id
    issued = int(now)
    claims = {
        "iss": provider.client_id,
        "sub": provider.client_id,
        "aud": provider.jwt_audience or provider.token_url,
        "jti": secrets.token_urlsafe(24),  # RFC 7523 §3: servers may reject a jti they have seen
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    signing_input = ".".join(_b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    return f"{signing_input}.{_b64(_sign(key, signing_input.encode('ascii')))}"
