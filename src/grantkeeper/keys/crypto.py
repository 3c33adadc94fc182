"""Encryption at rest (AES-256-GCM) and token fingerprints (HMAC-SHA256), over a key ring.

Each key yields subkeys through HKDF so that the fingerprint key can never decrypt anything. Every
ciphertext carries a random 96-bit nonce and is bound by associated data to the row and field it belongs to,
so a ciphertext copied into another row or column fails to decrypt instead of silently becoming another
grant's token.

Formats (the first byte says which):

* ``0x01 | nonce | ciphertext+tag``: written before key rotation existed; decrypted by trying each key in
  the ring (primary first);
* ``0x02 | key id (6 bytes) | nonce | ciphertext+tag``: the key id picks the key; the version byte and the key
  id are part of the associated data.

Fingerprints must stay the same across key rotation (history and diagnostics match tokens by them over
time), so the fingerprint key is the one derived from the store's *first* key, persisted encrypted in the
store by the first rotation (see `grantkeeper.keys.rekey`) and adopted with `Crypto.unlock` at open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grantkeeper._exceptions import EncryptionKeyError, StoreFormatError
from grantkeeper._secrets import Secret
from grantkeeper.keys.sources import KeySource

__all__ = ["Crypto", "SealedSecret", "hkdf", "key_id"]

_V1 = b"\x01"
_V2 = b"\x02"
_KID_BYTES = 6
_NONCE_BYTES = 12
_TAG_BYTES = 16
_V2_NONCE_AT = 1 + _KID_BYTES
_V2_BODY_AT = _V2_NONCE_AT + _NONCE_BYTES


def hkdf(material: bytes, *, info: bytes, salt: bytes | None = None) -> bytes:
    """A 32-byte HKDF-SHA256 subkey of `material` for the purpose `info` names (every subkey here is one)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)


def _derive(master: bytes, purpose: bytes) -> bytes:
    return hkdf(master, info=b"grantkeeper/v1/" + purpose)


def _key_id(master: bytes) -> bytes:
    return hmac.new(_derive(master, b"key-id"), b"key-id", hashlib.sha256).digest()[:_KID_BYTES]


def key_id(master: bytes) -> str:
    """The public name of a 32-byte key (not secret): what messages and ``keys list`` show instead of the key."""
    return _key_id(master).hex()


class _Key:
    __slots__ = ("aead", "fingerprint_key", "kid")

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise EncryptionKeyError("encryption key must be 32 bytes")
        self.kid = _key_id(master)
        self.aead = AESGCM(_derive(master, b"encryption"))
        self.fingerprint_key = _derive(master, b"fingerprint")


class Crypto:
    """Encrypts values for one store with its ring's primary key and fingerprints tokens.

    `source`, when given, is read again once if a value names a key id this ring lacks (another process
    rotated the key since this one opened the store).
    """

    __slots__ = ("_fp_key", "_keys", "_lock", "_primary", "source")

    def __init__(self, master: bytes | Sequence[bytes], *, source: KeySource | None = None) -> None:
        masters = [master] if isinstance(master, bytes) else list(master)
        if not masters:
            raise EncryptionKeyError("the key ring is empty")
        keys = [_Key(m) for m in masters]
        self._keys: dict[bytes, _Key] = {}
        for key in keys:
            self._keys.setdefault(key.kid, key)
        self._primary = keys[0]
        self._fp_key = keys[0].fingerprint_key  # until `unlock` adopts the store's own
        self._lock = threading.Lock()
        self.source = source

    # ---------------------------------------------------------------- the ring

    @property
    def key_id(self) -> str:
        """The primary key's public name (not secret): lets messages say which key is meant."""
        return self._primary.kid.hex()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id in the ring, primary first (after a `reload`, the primary is a key added last)."""
        primary = self._primary.kid
        return (primary.hex(), *(kid.hex() for kid in self._keys if kid != primary))

    def key_id_of(self, blob: bytes) -> str | None:
        """The key id a value names; None for a format-1 value (written before key ids existed)."""
        return blob[1 : 1 + _KID_BYTES].hex() if blob[:1] == _V2 and len(blob) > _KID_BYTES else None

    def is_current(self, blob: bytes) -> bool:
        """Whether `blob` is already encrypted with the primary key in the current format."""
        return blob[:1] == _V2 and blob[1 : 1 + _KID_BYTES] == self._primary.kid

    def reencrypt(self, blob: bytes, *, aad: str) -> bytes:
        """`blob` encrypted again with the primary key (same plaintext, same associated data)."""
        return self.encrypt_bytes(self.decrypt_bytes(blob, aad=aad), aad=aad)

    def reload(self) -> None:
        """Merge the keys the source holds now; its first key becomes primary (a finished rotation)."""
        if self.source is None:
            return
        with self._lock:
            keys = [_Key(m) for m in self.source.load()]
            for key in keys:
                self._keys.setdefault(key.kid, key)
            self._primary = self._keys[keys[0].kid]

    # ---------------------------------------------------------------- the store's fingerprint key

    def unlock(self, key_check: bytes, *, aad: str, fingerprint_key: bytes | None, fingerprint_aad: str) -> None:
        """Prove the ring opens this store and adopt the store's fingerprint key.

        Raises StoreFormatError when no key in the ring decrypts `key_check`. Without a persisted fingerprint
        key (no rotation yet), the store's first key is the one that opens the key check.
        """
        opener = self._opening_key(key_check, aad=aad)
        if fingerprint_key is not None:
            self._fp_key = self.decrypt_bytes(fingerprint_key, aad=fingerprint_aad)
        else:
            self._fp_key = opener.fingerprint_key

    def sealed_fingerprint_key(self, *, aad: str) -> bytes:
        """The fingerprint key encrypted with the primary key, for the store to keep across rotations."""
        return self.encrypt_bytes(self._fp_key, aad=aad)

    def _opening_key(self, blob: bytes, *, aad: str) -> _Key:
        for key in self._candidates(blob, aad=aad):
            if self._open_with(key, blob, aad) is not None:
                return key
        raise self._failed(aad)

    # ---------------------------------------------------------------- values

    def fingerprint(self, token: Secret | str) -> str:
        """A short keyed hash: the only form in which a token may appear in logs and history."""
        value = token.reveal() if isinstance(token, Secret) else token
        return "fp_" + hmac.new(self._fp_key, value.encode(), hashlib.sha256).hexdigest()[:16]

    def keyed_digest(self, value: str, *, purpose: str) -> str:
        """A full-length HMAC-SHA256 (hex) of `value` under a subkey of the store's fingerprint key for `purpose`:
        for credentials the store must recognise but never keep (API keys). Stable across key rotations."""
        key = _derive(self._fp_key, b"digest/" + purpose.encode())
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, value: Secret, *, aad: str) -> bytes:
        return self.encrypt_bytes(value.reveal().encode(), aad=aad)

    def decrypt(self, blob: bytes, *, aad: str) -> Secret:
        return Secret(self.decrypt_bytes(blob, aad=aad).decode())

    def sealed(self, blob: bytes, *, aad: str) -> SealedSecret:
        """`blob` as a `Secret` that is decrypted when first used (`SealedSecret`)."""
        return SealedSecret(self, blob, aad)

    def encrypt_bytes(self, data: bytes, *, aad: str) -> bytes:
        key = self._primary
        header = _V2 + key.kid
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + key.aead.encrypt(nonce, data, header + aad.encode())

    def decrypt_bytes(self, blob: bytes, *, aad: str) -> bytes:
        # Every cold token read decrypts: the common case (format 2, a key in the ring) without the general path's
        # candidate list and re-slicing. The result and the errors are the general path's.
        if blob[:1] == _V2 and len(blob) >= _V2_BODY_AT + _TAG_BYTES:
            key = self._keys.get(blob[1:_V2_NONCE_AT])
            if key is not None:
                try:
                    return key.aead.decrypt(blob[_V2_NONCE_AT:_V2_BODY_AT], blob[_V2_BODY_AT:],
                                            blob[:_V2_NONCE_AT] + aad.encode())  # fmt: skip
                except InvalidTag:
                    raise self._failed(aad) from None
        for key in self._candidates(blob, aad=aad):
            plain = self._open_with(key, blob, aad)
            if plain is not None:
                return plain
        raise self._failed(aad)

    def _candidates(self, blob: bytes, *, aad: str) -> list[_Key]:
        """The keys that may have written `blob`: the named one for format 2, every key for format 1."""
        if blob[:1] == _V1 and len(blob) >= 1 + _NONCE_BYTES + _TAG_BYTES:
            return list(self._keys.values())
        if blob[:1] == _V2 and len(blob) >= 1 + _KID_BYTES + _NONCE_BYTES + _TAG_BYTES:
            kid = blob[1 : 1 + _KID_BYTES]
            if kid not in self._keys:
                self.reload()
            if kid not in self._keys:
                raise StoreFormatError(
                    f"encrypted value for {aad} was written with key id {kid.hex()}, which is not in the key ring "
                    f"({', '.join(self.key_ids)}); add that key back to the ring (after the new one) and run "
                    "'grantkeeper keys rotate'"
                )
            return [self._keys[kid]]
        raise StoreFormatError(f"encrypted value for {aad} is damaged or in an unknown format")

    @staticmethod
    def _open_with(key: _Key, blob: bytes, aad: str) -> bytes | None:
        if blob[:1] == _V1:
            nonce, body, associated = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :], aad.encode()
        else:
            start = 1 + _KID_BYTES
            nonce, body = blob[start : start + _NONCE_BYTES], blob[start + _NONCE_BYTES :]
            associated = blob[:start] + aad.encode()
        try:
            return key.aead.decrypt(nonce, body, associated)
        except InvalidTag:
            return None

    @staticmethod
    def _failed(aad: str) -> StoreFormatError:
        return StoreFormatError(
            f"encrypted value for {aad} failed authentication: it was tampered with, moved from another "
            "row, or written with another key; restore the store from a backup or re-import the grant"
        )


class SealedSecret(Secret):
    """A stored secret that is decrypted when its value is first needed, then behaves as any `Secret`.

    A cold token read returns the grant's refresh token without using it, and a claim returns the access token it is
    about to replace: decrypting those (and registering their values for redaction) is most of what such a read
    costs beyond its SQL. The value is not in memory until it is revealed, so there is nothing to redact before. A
    value that fails authentication raises `StoreFormatError` where it is first used instead of at the read. Only
    `reveal` differs from `Secret`: every other operation of a `Secret` goes through it.
    """

    __slots__ = ("_aad", "_blob", "_crypto")

    def __init__(self, crypto: Crypto, blob: bytes, aad: str) -> None:  # no value yet: Secret.__init__ runs on reveal
        self._crypto = crypto
        self._blob = blob
        self._aad = aad
        self._registered = False  # nothing to forget unless revealed

    def reveal(self) -> str:
        try:
            return self._value
        except AttributeError:  # the slot is empty until the first reveal
            value = self._crypto.decrypt_bytes(self._blob, aad=self._aad).decode()
            Secret.__init__(self, value)  # two threads may both get here: each registration is counted, as two Secrets
            return value
