"""Tokens a read does not use stay sealed until used (`SealedSecret`): a cold token read leaves the refresh token
encrypted, a claim leaves the access token it replaces encrypted. A damaged refresh token no longer fails a read that
serves a valid access token; the refresh that would spend it fails instead, before anything is recorded."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

import pytest

from grantkeeper import Keeper, Provider, Secret, StoreFormatError
from grantkeeper._secrets import live_values_in
from grantkeeper.keys.crypto import Crypto, SealedSecret
from grantkeeper.stores import GrantUpdate, open_store

T0 = 1_800_000_000.0
KEY = bytes(range(32))
REFRESH = "refresh-token-plaintext-AAAAAAAAAAAAAAAA"
ACCESS = "access-token-plaintext-BBBBBBBBBBBBBBBBBB"
AAD = "grantkeeper/grants/g/refresh_token"


@pytest.fixture
def decrypted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The associated data of every value the stores decrypt, in order."""
    seen: list[str] = []
    real = Crypto.decrypt_bytes

    def counting(self: Crypto, blob: bytes, *, aad: str) -> bytes:
        seen.append(aad)
        return real(self, blob, aad=aad)

    monkeypatch.setattr(Crypto, "decrypt_bytes", counting)
    return seen


def _store_with_grant(path: Path, now: float) -> None:
    store = open_store(f"sqlite://{path}")
    try:
        store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"), now=now)
        store.import_grant("g", provider="p", refresh_token=Secret(REFRESH), scopes=(), now=now,
                           access_token=Secret(ACCESS), expires_at=now + 3600)  # fmt: skip
    finally:
        store.close()


def test_sealed_secret_behaves_as_the_secret_it_holds() -> None:
    crypto = Crypto(KEY)
    blob = crypto.encrypt(Secret(REFRESH), aad=AAD)
    sealed = crypto.sealed(blob, aad=AAD)
    assert isinstance(sealed, SealedSecret) and isinstance(sealed, Secret)
    assert REFRESH not in live_values_in(f"x {REFRESH} x")  # not in memory yet: nothing to redact
    assert repr(sealed) == str(sealed) == f"{sealed}" == "Secret('**********')"
    assert sealed == Secret(REFRESH) and Secret(REFRESH) == sealed  # both operand orders
    assert sealed != Secret(REFRESH + "x") and Secret(REFRESH + "x") != sealed
    assert crypto.sealed(blob, aad=AAD) == sealed
    assert hash(sealed) == hash(Secret(REFRESH))
    fresh = crypto.sealed(blob, aad=AAD)  # every Secret operation works before the first reveal too
    assert len(fresh) == len(REFRESH)
    assert Secret.__eq__(Secret(REFRESH), crypto.sealed(blob, aad=AAD)) is True  # called from Secret's side
    assert sealed and sealed.reveal() == REFRESH
    assert live_values_in(f"x {REFRESH} x") == [REFRESH]  # revealed: known to redaction like any Secret
    with pytest.raises(TypeError):
        pickle.dumps(sealed)


def test_sealed_secret_that_fails_authentication_raises_where_used() -> None:
    crypto = Crypto(KEY)
    blob = bytearray(crypto.encrypt(Secret(REFRESH), aad=AAD))
    blob[-1] ^= 1
    sealed = crypto.sealed(bytes(blob), aad=AAD)
    with pytest.raises(StoreFormatError, match="failed authentication") as raised:
        sealed.reveal()
    assert REFRESH not in str(raised.value)
    wrong_row = crypto.sealed(crypto.encrypt(Secret(REFRESH), aad=AAD), aad="grantkeeper/grants/h/refresh_token")
    with pytest.raises(StoreFormatError):
        bool(wrong_row)


def test_cold_read_decrypts_only_the_access_token(tmp_path: Path, decrypted: list[str]) -> None:
    _store_with_grant(tmp_path / "s.db", time.time())
    store = open_store(f"sqlite://{tmp_path}/s.db")
    try:
        decrypted.clear()
        grant, _ = store.get_grant_and_provider("g")
        assert grant.access_token is not None and grant.access_token.reveal() == ACCESS
        assert decrypted == ["grantkeeper/grants/g/access_token"]
        assert grant.refresh_token == Secret(REFRESH)  # decrypted when used, with its own row's associated data
        assert decrypted[-1] == "grantkeeper/grants/g/refresh_token"
    finally:
        store.close()


def test_forced_claim_leaves_the_replaced_access_token_sealed(tmp_path: Path, decrypted: list[str]) -> None:
    _store_with_grant(tmp_path / "s.db", T0)
    store = open_store(f"sqlite://{tmp_path}/s.db")
    try:
        decrypted.clear()
        claim = store.claim("g", worker="w", lease_ttl=30, now=T0 + 1, force=True, seen_generation=None)
        assert claim.lease is not None and claim.attempt is not None
        assert decrypted == ["grantkeeper/grants/g/refresh_token"]
        assert claim.grant.access_token == Secret(ACCESS)
        update = GrantUpdate(refresh_token=Secret(REFRESH + "-next"), access_token=Secret(ACCESS + "-next"),
                             expires_at=T0 + 3600, scopes=None)  # fmt: skip
        committed = store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=update, now=T0 + 2)
        assert committed.generation == 2
        assert store.get_grant("g").refresh_token == Secret(REFRESH + "-next")
    finally:
        store.close()


def _damage_refresh_token(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        blob = bytearray(conn.execute("SELECT refresh_token FROM grants WHERE name = 'g'").fetchone()[0])
        blob[-1] ^= 1
        conn.execute("UPDATE grants SET refresh_token = ? WHERE name = 'g'", (bytes(blob),))
        conn.commit()
    finally:
        conn.close()


def test_damaged_refresh_token_serves_the_valid_access_token_and_fails_the_refresh(tmp_path: Path) -> None:
    """The cold read serves the access token it can decrypt; the refresh that needs the damaged refresh token fails
    with the store's typed error inside the claim, so no lease is taken and no attempt is recorded."""
    path = tmp_path / "s.db"
    _store_with_grant(path, time.time())
    _damage_refresh_token(path)
    with Keeper.open(f"sqlite://{path}", create=False) as keeper:
        assert keeper.access_token("g") == ACCESS
        with pytest.raises(StoreFormatError, match="refresh_token failed authentication") as raised:
            keeper.refresh("g", force=True)
        assert REFRESH not in str(raised.value)
        assert keeper.store.list_attempts("g") == []
        assert keeper.store.lease_holder("g", now=time.time()) is None
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT generation, state FROM grants WHERE name = 'g'").fetchone() == (1, "active")
    finally:
        conn.close()
