"""Encryption at rest, fingerprints and the master key's life cycle (I6, I7)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper._exceptions import EncryptionKeyError, StoreFormatError
from grantkeeper._secrets import Secret
from grantkeeper.keys.crypto import Crypto
from grantkeeper.keys.sources import KEY_ENV, load_or_create_key, parse_key

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
TOKEN = "RT-refresh-token-value-0123456789abcdef"
AAD = "grant:billing-sync:refresh_token"


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


# --- encryption -------------------------------------------------------------------------------------------


def test_round_trip() -> None:
    """decrypt(encrypt(v)) gives v back as a Secret."""
    crypto = Crypto(KEY_A)
    assert crypto.decrypt(crypto.encrypt(Secret(TOKEN), aad=AAD), aad=AAD) == Secret(TOKEN)


@settings(deadline=None)
@given(value=st.text(), aad=st.text())
def test_round_trip_any_text(value: str, aad: str) -> None:
    """Any text (empty, non-ASCII) with any associated data round-trips."""
    crypto = Crypto(KEY_A)
    assert crypto.decrypt(crypto.encrypt(Secret(value), aad=aad), aad=aad).reveal() == value


def test_round_trip_across_instances_with_the_same_key() -> None:
    """A value encrypted by one Crypto decrypts with another built from the same key."""
    blob = Crypto(KEY_A).encrypt(Secret(TOKEN), aad=AAD)
    assert Crypto(KEY_A).decrypt(blob, aad=AAD).reveal() == TOKEN


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    """The encrypted blob does not contain the token's bytes."""
    assert TOKEN.encode() not in Crypto(KEY_A).encrypt(Secret(TOKEN), aad=AAD)


def test_other_associated_data_is_rejected() -> None:
    """A ciphertext moved to another row or field (other aad) fails with StoreFormatError."""
    crypto = Crypto(KEY_A)
    blob = crypto.encrypt(Secret(TOKEN), aad=AAD)
    with pytest.raises(StoreFormatError):
        crypto.decrypt(blob, aad="grant:other-grant:refresh_token")


def test_other_key_is_rejected() -> None:
    """A ciphertext written with another key fails with StoreFormatError."""
    blob = Crypto(KEY_A).encrypt(Secret(TOKEN), aad=AAD)
    with pytest.raises(StoreFormatError):
        Crypto(KEY_B).decrypt(blob, aad=AAD)


def test_every_flipped_byte_is_rejected() -> None:
    """Flipping any single byte of the blob (version, nonce, ciphertext, tag) gives StoreFormatError."""
    crypto = Crypto(KEY_A)
    blob = crypto.encrypt(Secret(TOKEN), aad=AAD)
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(StoreFormatError):
            crypto.decrypt(bytes(tampered), aad=AAD)


@settings(deadline=None)
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_bit_pattern_flip_is_rejected(index: int, mask: int) -> None:
    """XOR-ing any non-zero mask into any byte of the blob gives StoreFormatError."""
    crypto = Crypto(KEY_A)
    blob = bytearray(crypto.encrypt(Secret(TOKEN), aad=AAD))
    blob[index % len(blob)] ^= mask
    with pytest.raises(StoreFormatError):
        crypto.decrypt(bytes(blob), aad=AAD)


@pytest.mark.parametrize("cut", [0, 1, 13, 28, -1])
def test_truncated_blob_is_rejected(cut: int) -> None:
    """A truncated blob (down to empty) gives StoreFormatError, not a crash."""
    crypto = Crypto(KEY_A)
    blob = crypto.encrypt(Secret(TOKEN), aad=AAD)
    with pytest.raises(StoreFormatError):
        crypto.decrypt(blob[:cut], aad=AAD)


def test_appended_bytes_are_rejected() -> None:
    """Extra bytes after the tag give StoreFormatError."""
    crypto = Crypto(KEY_A)
    with pytest.raises(StoreFormatError):
        crypto.decrypt(crypto.encrypt(Secret(TOKEN), aad=AAD) + b"\x00", aad=AAD)


def test_decrypt_error_does_not_show_the_blob_or_token() -> None:
    """The StoreFormatError message names the field (aad), not the ciphertext or the key."""
    crypto = Crypto(KEY_A)
    blob = crypto.encrypt(Secret(TOKEN), aad=AAD)
    with pytest.raises(StoreFormatError) as info:
        Crypto(KEY_B).decrypt(blob, aad=AAD)
    message = str(info.value)
    assert AAD in message
    assert TOKEN not in message
    assert blob.hex() not in message


def test_same_plaintext_encrypts_differently() -> None:
    """Encrypting the same value twice gives different blobs (random nonce)."""
    crypto = Crypto(KEY_A)
    blobs = {crypto.encrypt(Secret(TOKEN), aad=AAD) for _ in range(50)}
    assert len(blobs) == 50


def test_nonces_are_not_reused() -> None:
    """The 12-byte nonce after the version byte differs on every encryption."""
    crypto = Crypto(KEY_A)
    nonces = {crypto.encrypt(Secret(TOKEN), aad=AAD)[1:13] for _ in range(200)}
    assert len(nonces) == 200


@pytest.mark.parametrize("key", [b"", b"short", bytes(31), bytes(33)])
def test_master_key_must_be_32_bytes(key: bytes) -> None:
    """Crypto refuses a master key that is not 32 bytes with EncryptionKeyError."""
    with pytest.raises(EncryptionKeyError):
        Crypto(key)


# --- fingerprints -----------------------------------------------------------------------------------------


def test_fingerprint_is_stable_for_a_key() -> None:
    """The same token under the same key always has the same fingerprint, across instances."""
    assert Crypto(KEY_A).fingerprint(TOKEN) == Crypto(KEY_A).fingerprint(TOKEN)


def test_fingerprint_accepts_secret_or_str_alike() -> None:
    """fingerprint(Secret(t)) equals fingerprint(t)."""
    crypto = Crypto(KEY_A)
    assert crypto.fingerprint(Secret(TOKEN)) == crypto.fingerprint(TOKEN)


def test_fingerprint_differs_across_keys() -> None:
    """The same token has different fingerprints under different keys (keyed hash, not a plain hash)."""
    assert Crypto(KEY_A).fingerprint(TOKEN) != Crypto(KEY_B).fingerprint(TOKEN)


def test_fingerprint_differs_across_tokens() -> None:
    """Different tokens have different fingerprints."""
    crypto = Crypto(KEY_A)
    assert crypto.fingerprint(TOKEN) != crypto.fingerprint(TOKEN + "x")


def test_fingerprint_shape() -> None:
    """A fingerprint is "fp_" followed by 16 lower-case hex digits."""
    fp = Crypto(KEY_A).fingerprint(TOKEN)
    assert fp.startswith("fp_")
    assert len(fp) == 19
    assert all(c in "0123456789abcdef" for c in fp[3:])


@settings(deadline=None)
@given(token=st.text(min_size=8))
def test_fingerprint_never_contains_the_token(token: str) -> None:
    """For any token of 8+ characters, its fingerprint does not contain it."""
    fp = Crypto(KEY_A).fingerprint(token)
    assert fp.startswith("fp_")
    assert token not in fp


def test_key_id_is_stable_and_distinguishes_keys() -> None:
    """key_id is the same for the same key and differs between keys."""
    assert Crypto(KEY_A).key_id == Crypto(KEY_A).key_id
    assert Crypto(KEY_A).key_id != Crypto(KEY_B).key_id


def test_key_id_does_not_reveal_the_key() -> None:
    """key_id contains neither the key's hex nor its base64 text."""
    key_id = Crypto(KEY_A).key_id
    assert key_id not in KEY_A.hex()
    assert key_id not in b64(KEY_A)


# --- parse_key --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b64(KEY_A), b64(KEY_A).rstrip("="), f"  {b64(KEY_A)}\n"])
def test_parse_key_accepts_base64url_with_or_without_padding(text: str) -> None:
    """A base64url key is read with or without padding and surrounding whitespace."""
    assert parse_key(text, origin="test") == KEY_A


@pytest.mark.parametrize(
    "text",
    ["", "not-a-key", b64(bytes(16)), b64(bytes(33)), "é" * 43, "!!!!" * 11, KEY_A.hex()],
)
def test_parse_key_rejects_bad_text(text: str) -> None:
    """Text that is not 32 bytes of base64url raises EncryptionKeyError."""
    with pytest.raises(EncryptionKeyError):
        parse_key(text, origin="test")


def test_parse_key_error_names_origin_not_value() -> None:
    """The bad-key message names where the key came from and does not echo the text."""
    bad = "my-not-quite-a-key-value-xyz"
    with pytest.raises(EncryptionKeyError) as info:
        parse_key(bad, origin="$GRANTKEEPER_KEY")
    assert "$GRANTKEEPER_KEY" in str(info.value)
    assert bad not in str(info.value)


# --- load_or_create_key -----------------------------------------------------------------------------------


def test_key_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    """With create=True and no key file, a key file readable only by its owner (0600) is created."""
    key_file = tmp_path / "store.key"
    load_or_create_key(key_file, create=True)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_created_key_is_the_key_in_the_file(tmp_path: Path) -> None:
    """The returned key is 32 bytes and is what the new file holds."""
    key_file = tmp_path / "store.key"
    key = load_or_create_key(key_file, create=True)
    assert len(key) == 32
    assert parse_key(key_file.read_text(encoding="ascii"), origin="file") == key


def test_created_key_is_loaded_back(tmp_path: Path) -> None:
    """A created key file loads back as the same key with create=False."""
    key_file = tmp_path / "store.key"
    assert load_or_create_key(key_file, create=True) == load_or_create_key(key_file, create=False)


def test_created_keys_are_random(tmp_path: Path) -> None:
    """Two new stores get different keys."""
    assert load_or_create_key(tmp_path / "a.key", create=True) != load_or_create_key(tmp_path / "b.key", create=True)


def test_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    """create=True with an existing key file loads it instead of writing a new key."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A) + "\n")
    assert load_or_create_key(key_file, create=True) == KEY_A
    assert key_file.read_text(encoding="ascii") == b64(KEY_A) + "\n"


def test_key_file_is_created_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a key file appears between the existence check and creation (another process creating the same
    store), it is not overwritten: its key is the store's, and is the one returned."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A) + "\n")
    real_stat = Path.stat
    missed: list[Path] = []

    def racing_stat(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        if self == key_file and not missed:
            missed.append(self)
            raise FileNotFoundError(str(self))  # the other process creates the file right after this check
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", racing_stat)
    assert load_or_create_key(key_file, create=True) == KEY_A
    assert missed == [key_file]
    monkeypatch.undo()
    assert key_file.read_text(encoding="ascii") == b64(KEY_A) + "\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o666])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A key file with any group or other permission bit raises EncryptionKeyError telling to chmod 600."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A), mode)
    with pytest.raises(EncryptionKeyError, match="chmod 600"):
        load_or_create_key(key_file, create=False)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    """A key file readable only by its owner (0600 or 0400) is accepted."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A), mode)
    assert load_or_create_key(key_file, create=False) == KEY_A


def test_env_key_takes_precedence_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$GRANTKEEPER_KEY wins over the key file."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A))
    monkeypatch.setenv(KEY_ENV, b64(KEY_B))
    assert load_or_create_key(key_file, create=False) == KEY_B


def test_env_key_means_no_file_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With $GRANTKEEPER_KEY set, creating a store writes no key file."""
    monkeypatch.setenv(KEY_ENV, b64(KEY_B))
    key_file = tmp_path / "store.key"
    assert load_or_create_key(key_file, create=True) == KEY_B
    assert not key_file.exists()


def test_env_key_ignores_a_badly_permissioned_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With $GRANTKEEPER_KEY set, the key file is not consulted at all."""
    key_file = write_key(tmp_path / "store.key", "garbage", 0o644)
    monkeypatch.setenv(KEY_ENV, b64(KEY_B))
    assert load_or_create_key(key_file, create=False) == KEY_B


def test_bad_env_key_is_an_encryption_key_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A $GRANTKEEPER_KEY that is not a valid key raises EncryptionKeyError naming the variable, not its value."""
    monkeypatch.setenv(KEY_ENV, "this-is-not-a-valid-key-text")
    with pytest.raises(EncryptionKeyError) as info:
        load_or_create_key(tmp_path / "store.key", create=True)
    assert KEY_ENV in str(info.value)
    assert "this-is-not-a-valid-key-text" not in str(info.value)


def test_bad_key_file_text_is_an_encryption_key_error(tmp_path: Path) -> None:
    """A key file whose text is not a key raises EncryptionKeyError naming the file."""
    key_file = write_key(tmp_path / "store.key", "definitely not a key\n")
    with pytest.raises(EncryptionKeyError, match=r"store\.key"):
        load_or_create_key(key_file, create=False)


def test_binary_key_file_is_an_encryption_key_error(tmp_path: Path) -> None:
    """A key file holding non-ASCII bytes raises EncryptionKeyError, not a decode error."""
    key_file = tmp_path / "store.key"
    key_file.write_bytes(os.urandom(32) + b"\xff\xfe")
    key_file.chmod(0o600)
    with pytest.raises(EncryptionKeyError):
        load_or_create_key(key_file, create=False)


def test_missing_key_without_create_is_an_error(tmp_path: Path) -> None:
    """No env key and no key file with create=False raises EncryptionKeyError and creates nothing."""
    key_file = tmp_path / "store.key"
    with pytest.raises(EncryptionKeyError, match=KEY_ENV):
        load_or_create_key(key_file, create=False)
    assert not key_file.exists()


def test_empty_env_key_is_treated_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty $GRANTKEEPER_KEY falls back to the key file."""
    key_file = write_key(tmp_path / "store.key", b64(KEY_A))
    monkeypatch.setenv(KEY_ENV, "")
    assert load_or_create_key(key_file, create=False) == KEY_A
