"""Signing keys for private_key_jwt tests: generated once per process, written to a private temp directory."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_DIR = Path(tempfile.mkdtemp(prefix="gk-keys-"))
atexit.register(shutil.rmtree, _DIR, True)


@functools.cache
def _key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(kind)


@functools.cache
def key_file(kind: str = "rsa") -> str:
    """Path of an unencrypted PKCS#8 PEM private key of `kind` ("rsa" or "ec")."""
    path = _DIR / f"{kind}.pem"
    pem = _key(kind).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return str(path)


def public_pem(kind: str = "rsa") -> bytes:
    return (
        _key(kind)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
