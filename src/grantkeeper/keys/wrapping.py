"""The key that wraps a bundle: a passphrase (scrypt) or a key file (HKDF), and the AES-256-GCM seal under it.

A passphrase goes through scrypt (``n = 2**17``, ``r = 8``, ``p = 1``, 16-byte random salt, 32-byte output:
about 128 MiB of memory per attempt); a key file holds 32 random bytes (raw, or base64url as ``grantkeeper keys
generate --output FILE`` writes them), must be mode 0600, and goes through HKDF-SHA256 with a random salt. The
bundle's format (header, payload) is `grantkeeper.bundle`'s; this module only derives keys and seals bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from grantkeeper._exceptions import BundleAuthError, BundleError, ConfigurationError, EncryptionKeyError
from grantkeeper._secrets import Secret
from grantkeeper.keys.crypto import hkdf
from grantkeeper.keys.sources import parse_key, read_private_file

__all__ = [
    "MIN_PASSPHRASE",
    "NONCE_BYTES",
    "SALT_BYTES",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "TAG_BYTES",
    "BundleKey",
]

SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_MIN_SCRYPT_N = 2**14  # below this a passphrase is too cheap to guess; above _MAX a bundle could exhaust memory
_MAX_SCRYPT_N = 2**18  # the header is read before anything is authenticated: cap the memory it can demand
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
_HKDF_INFO = b"grantkeeper/bundle/v1"
MIN_PASSPHRASE = 8


@dataclass(frozen=True, slots=True)
class BundleKey:
    """What opens a bundle: a passphrase (scrypt) or 32 key bytes from a file (HKDF)."""

    kind: str  # "passphrase" or "key"
    _material: Secret | bytes

    @classmethod
    def passphrase(cls, value: Secret) -> BundleKey:
        if len(value) < MIN_PASSPHRASE:
            raise ConfigurationError(f"the bundle passphrase must be at least {MIN_PASSPHRASE} characters")
        return cls("passphrase", value)

    @classmethod
    def key_file(cls, path: Path) -> BundleKey:
        try:
            raw = read_private_file(path)
        except FileNotFoundError:
            raise EncryptionKeyError(f"cannot read key file {path}: it does not exist; check its path") from None
        key = raw if len(raw) == 32 else parse_key(raw.decode("ascii", errors="replace"), origin=str(path))
        return cls("key", key)

    def new_parameters(self, *, scrypt_n: int = SCRYPT_N) -> tuple[dict[str, Any], bytes, bytes]:
        """A fresh (key-derivation parameters, salt, nonce) for one new bundle: what its header records."""
        kdf: dict[str, Any] = (
            {"name": "scrypt", "n": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P}
            if self.kind == "passphrase"
            else {"name": "hkdf-sha256"}
        )
        return kdf, os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)

    def accepts(self, kdf: dict[str, Any]) -> bool:
        """Whether `kdf` (read from a header no key has authenticated yet) is a derivation this key may run: the
        same kind, and scrypt's cost neither too cheap to protect a passphrase nor large enough to exhaust memory."""
        if self.kind != "passphrase":
            return kdf.get("name") == "hkdf-sha256"
        n = kdf.get("n")
        return (
            kdf.get("name") == "scrypt"
            and isinstance(n, int)
            and _MIN_SCRYPT_N <= n <= _MAX_SCRYPT_N
            and n & (n - 1) == 0
            and kdf.get("r") == SCRYPT_R
            and kdf.get("p") == SCRYPT_P
        )

    def derive(self, params: dict[str, Any], salt: bytes) -> bytes:
        if isinstance(self._material, Secret):
            kdf = Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
            try:
                return kdf.derive(self._material.reveal().encode())
            except MemoryError:
                raise BundleError(
                    f"not enough memory for the bundle's key derivation (scrypt n={params['n']}); import it on a "
                    "host with more memory"
                ) from None
        return hkdf(self._material, info=_HKDF_INFO, salt=salt)

    def seal(self, payload: bytes, *, kdf: dict[str, Any], salt: bytes, nonce: bytes, associated: bytes) -> bytes:
        """`payload` encrypted and authenticated together with `associated` (the bundle's plaintext part)."""
        return AESGCM(self.derive(kdf, salt)).encrypt(nonce, payload, associated)

    def open(self, body: bytes, *, kdf: dict[str, Any], salt: bytes, nonce: bytes, associated: bytes) -> bytes:
        """The payload `seal` wrote; BundleAuthError when the key is wrong or any byte changed."""
        try:
            return AESGCM(self.derive(kdf, salt)).decrypt(nonce, body, associated)
        except InvalidTag:
            raise BundleAuthError(
                "the bundle does not open: wrong passphrase or key, or the file was changed since it was written"
            ) from None

    def __repr__(self) -> str:
        return f"BundleKey({self.kind!r}, '**********')"
