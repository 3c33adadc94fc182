"""Encryption at rest (AES-256-GCM) and token fingerprints (HMAC-SHA256).

One 32-byte master key per store. Two subkeys are derived from it with HKDF so that the fingerprint key
can never decrypt anything. Every ciphertext carries a random 96-bit nonce and is bound by associated
data to the row and field it belongs to, so a ciphertext copied into another row or column fails to
decrypt instead of silently becoming another grant's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grantkeeper._exceptions import EncryptionKeyError, StoreFormatError
from grantkeeper._fsutil import fsync_dir
from grantkeeper._secrets import Secret

__all__ = ["KEY_ENV", "Crypto", "load_or_create_key", "parse_key"]

KEY_ENV = "GRANTKEEPER_KEY"
_VERSION = b"\x01"
_NONCE_BYTES = 12


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"grantkeeper/v1/" + purpose).derive(master)


def parse_key(text: str, *, origin: str) -> bytes:
    """Decode a base64url key of exactly 32 bytes; `origin` names where it came from for the error."""
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise EncryptionKeyError(
            f"the key in {origin} is not 32 bytes of base64url; generate one with "
            '`python -c "import secrets,base64;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"`'
        )
    return key


def load_or_create_key(key_file: Path, *, create: bool) -> bytes:
    """The store's master key: ``$GRANTKEEPER_KEY`` if set, else the key file beside the store.

    The key file is created (mode 0600, exclusively) only when `create` is true, that is when the store is
    being created; a store that exists without its key is an error, never a reason to make a new key.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return parse_key(env, origin=f"${KEY_ENV}")
    try:
        st = key_file.stat()
    except FileNotFoundError:
        if not create:
            raise EncryptionKeyError(
                f"no encryption key: ${KEY_ENV} is not set and the key file {key_file} does not exist; "
                "set the key this store was created with"
            ) from None
        key = os.urandom(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.urlsafe_b64encode(key) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(key_file.parent)
        return key
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EncryptionKeyError(
            f"key file {key_file} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {key_file}`"
        )
    return parse_key(key_file.read_text(encoding="ascii", errors="replace"), origin=str(key_file))


class Crypto:
    """Encrypts values for one store and fingerprints tokens with that store's key."""

    __slots__ = ("_aead", "_fp_key", "key_id")

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise EncryptionKeyError("encryption key must be 32 bytes")
        self._aead = AESGCM(_derive(master, b"encryption"))
        self._fp_key = _derive(master, b"fingerprint")
        #: A public name for the key (not secret): lets an error say which key a store expects.
        self.key_id = hmac.new(_derive(master, b"key-id"), b"key-id", hashlib.sha256).hexdigest()[:12]

    def fingerprint(self, token: Secret | str) -> str:
        """A short keyed hash: the only form in which a token may appear in logs and history."""
        value = token.reveal() if isinstance(token, Secret) else token
        return "fp_" + hmac.new(self._fp_key, value.encode(), hashlib.sha256).hexdigest()[:16]

    def encrypt(self, value: Secret, *, aad: str) -> bytes:
        return self.encrypt_bytes(value.reveal().encode(), aad=aad)

    def decrypt(self, blob: bytes, *, aad: str) -> Secret:
        return Secret(self.decrypt_bytes(blob, aad=aad).decode())

    def encrypt_bytes(self, data: bytes, *, aad: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, data, aad.encode())

    def decrypt_bytes(self, blob: bytes, *, aad: str) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise StoreFormatError(f"encrypted value for {aad} is damaged or in an unknown format")
        try:
            return self._aead.decrypt(blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :], aad.encode())
        except InvalidTag:
            raise StoreFormatError(
                f"encrypted value for {aad} failed authentication: it was tampered with, moved from another "
                "row, or written with another key; restore the store from a backup or re-import the grant"
            ) from None
