"""The simulator's check of an RFC 7523 ``private_key_jwt`` client assertion (RS256 / ES256).

Returns the reason for rejecting, or None: the simulator answers any reason with ``invalid_client``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["MAX_ASSERTION_LIFETIME", "check_assertion", "load_public_key"]

#: An assertion valid for longer than this is refused (RFC 7523 §3 lets servers reject a far-off exp).
MAX_ASSERTION_LIFETIME = 300.0

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_public_key(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("client_public_key must be a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("client_public_key must be an RSA or EC public key")
    return key


def _part(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verify(key: PublicKey, alg: str, signature: bytes, signed: bytes) -> bool:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def check_assertion(
    assertion: str, *, key: PublicKey, client_id: str, audiences: Collection[str], now: float, seen_jti: set[str]
) -> str | None:
    """Why `assertion` does not authenticate `client_id`, or None when it does (its jti is then remembered)."""
    decoded = _decoded(assertion)
    if isinstance(decoded, str):
        return decoded
    header, claims, signature = decoded
    alg = header.get("alg")
    signed = assertion.rsplit(".", 1)[0].encode()
    if alg not in ("RS256", "ES256") or not _verify(key, alg, signature, signed):
        return "client_assertion signature does not verify"
    problem = _claims_problem(claims, client_id=client_id, audiences=audiences, now=now)
    if problem is not None:
        return problem
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        return "client_assertion has no jti"
    if jti in seen_jti:
        return "client_assertion jti was already used"
    seen_jti.add(jti)
    return None


def _decoded(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes] | str:
    """The JWS's header, claims and signature, or why it has none."""
    segments = assertion.split(".")
    if len(segments) != 3:
        return "client_assertion is not a compact JWS"
    try:
        header: Any = json.loads(_part(segments[0]))
        claims: Any = json.loads(_part(segments[1]))
        signature = _part(segments[2])
    except (binascii.Error, ValueError):
        return "client_assertion is not decodable"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "client_assertion is not a JWT"
    return header, claims, signature


def _claims_problem(claims: dict[str, Any], *, client_id: str, audiences: Collection[str], now: float) -> str | None:
    """Whether the claims name this client, this server, and a short lifetime still running."""
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return "client_assertion iss and sub must be the client id"
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(a in audiences for a in named):
        return "client_assertion aud is not this server"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now:
        return "client_assertion has expired"
    if exp > now + MAX_ASSERTION_LIFETIME:
        return "client_assertion lives too long"
    return None
