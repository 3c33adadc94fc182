"""Key rotation for a store: unlock at open, re-encrypt every value with the primary key, count key use.

Every encrypted value of a store is a *cell*: the key check and fingerprint key in ``meta``, each provider's
client secret, each grant's refresh and access token, and each local recovery file. `rotate` rewrites the
cells that are not yet encrypted with the ring's primary key, one at a time, each in its own short
transaction guarded by compare-and-set on the old ciphertext: a refresh that commits meanwhile wins and the
cell is read again, so a concurrent refresh never loses a token. Rewriting is idempotent, so an interrupted
rotation (even SIGKILL) is resumed by running it again. `census` counts the values per key id, which is
what tells when an old key is used by nothing and can leave the ring.

Fingerprints do not change: the first rotation persists the store's fingerprint key (derived from its first
key) in ``meta``, encrypted like any other value, before anything else is rewritten.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grantkeeper._exceptions import EncryptionKeyError, StoreFormatError
from grantkeeper.keys.crypto import Crypto
from grantkeeper.keys.sources import write_private_file

if TYPE_CHECKING:
    from grantkeeper.stores.sql import Conn, SQLStore

__all__ = [
    "FINGERPRINT_AAD",
    "FORMAT_1",
    "KEY_CHECK_AAD",
    "Cell",
    "RotationResult",
    "census",
    "crypto_of",
    "rotate",
    "unlock",
]

KEY_CHECK_AAD = "grantkeeper/meta/key_check"
FINGERPRINT_AAD = "grantkeeper/meta/fingerprint_key"
#: The census label of values written before ciphertexts carried a key id.
FORMAT_1 = "format-1"
_CAS_TRIES = 5  # a cell rewritten by refreshes this many times in a row is left for the next run

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Cell:
    """One encrypted value: a column of one row (`path` None), or a recovery file (`path` set)."""

    aad: str
    table: str = ""
    key_column: str = ""
    key: str = ""
    column: str = ""
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class RotationResult:
    primary: str
    rewritten: int
    total: int
    #: key id (or FORMAT_1) -> number of values still encrypted with it, after the rewrite.
    usage: dict[str, int]

    @property
    def retirable(self) -> bool:
        """True when every value is encrypted with the primary key: the other keys can leave the ring."""
        return set(self.usage) <= {self.primary}


def unlock(conn: Conn, crypto: Crypto, *, where: str) -> None:
    """At open: prove the ring opens the store and adopt its fingerprint key (EncryptionKeyError if not)."""
    rows = {
        str(name): bytes(value)
        for name, value in conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('key_check', 'fingerprint_key')"
        ).fetchall()
    }
    if "key_check" not in rows:
        raise StoreFormatError(f"{where} has no key check: it is not a complete grantkeeper store")
    try:
        crypto.unlock(
            rows["key_check"],
            aad=KEY_CHECK_AAD,
            fingerprint_key=rows.get("fingerprint_key"),
            fingerprint_aad=FINGERPRINT_AAD,
        )
    except StoreFormatError:
        source = crypto.source.description if crypto.source is not None else "the key given"
        raise EncryptionKeyError(
            f"{where} was encrypted with a different key than the one given in {source} (key ids "
            f"{', '.join(crypto.key_ids)}); set GRANTKEEPER_KEY, GRANTKEEPER_KEY_COMMAND or the key file to the "
            "key it was created with"
        ) from None


#: Encrypted columns: (table, key column, columns). Meta rows are keyed by name like the rest.
_TABLES = (
    ("meta", "key", ("value",)),
    ("providers", "name", ("client_secret",)),
    ("grants", "name", ("refresh_token", "access_token")),
)
_META_AAD = {"key_check": KEY_CHECK_AAD, "fingerprint_key": FINGERPRINT_AAD}
_PAGE = 500  # rows per read: one query per page, not one per value


def _page(store: SQLStore, sql: str, after: str) -> list[Any]:
    rows: list[Any] = store._read(lambda conn: conn.execute(sql, (after,)).fetchall())
    return rows


def _values(store: SQLStore) -> Iterator[tuple[Cell, bytes]]:
    """Every encrypted value with its current ciphertext, read a page of rows at a time (keyset paging)."""
    for table, key_column, columns in _TABLES:
        sql = (
            f"SELECT {key_column}, {', '.join(columns)} FROM {table} WHERE {key_column} > ? "
            f"ORDER BY {key_column} LIMIT {_PAGE}"
        )
        last = ""
        while True:
            rows = _page(store, sql, last)
            for row in rows:
                key = str(row[0])
                for column, blob in zip(columns, row[1:], strict=True):
                    if blob is None or (table == "meta" and key not in _META_AAD):
                        continue
                    aad = _META_AAD[key] if table == "meta" else f"grantkeeper/{table}/{key}/{column}"
                    yield Cell(aad, table, key_column, key, column), bytes(blob)
            if len(rows) < _PAGE:
                break
            last = str(rows[-1][0])
    for path, aad in store.recovery.sealed_files():
        try:
            yield Cell(aad, path=path), path.read_bytes()
        except FileNotFoundError:
            continue  # replayed and removed since the listing


def _count(store: SQLStore) -> int:
    """How many values `_values` will yield at most (for the progress bar)."""
    row = store._read(
        lambda conn: conn.execute(
            "SELECT (SELECT count(*) FROM meta WHERE key IN ('key_check', 'fingerprint_key')) + "
            "(SELECT count(client_secret) FROM providers) + "
            "(SELECT count(refresh_token) + count(access_token) FROM grants)"
        ).fetchone()
    )
    return int(row[0]) + len(store.recovery.sealed_files())


def _read_cell(store: SQLStore, cell: Cell) -> bytes | None:
    if cell.path is not None:
        try:
            return cell.path.read_bytes()
        except FileNotFoundError:
            return None
    sql = f"SELECT {cell.column} FROM {cell.table} WHERE {cell.key_column} = ?"
    row = store._read(lambda conn: conn.execute(sql, (cell.key,)).fetchone())
    return None if row is None or row[0] is None else bytes(row[0])


def _write_cell(store: SQLStore, cell: Cell, old: bytes, new: bytes) -> bool:
    """Compare-and-set: replace `old` with `new` only if the cell still holds `old`."""
    if cell.path is not None:
        return _replace_file(cell.path, old, new)
    sql = f"UPDATE {cell.table} SET {cell.column} = ? WHERE {cell.key_column} = ? AND {cell.column} = ?"
    with store._tx() as conn:
        return bool(conn.execute(sql, (new, cell.key, old)).rowcount)


def _replace_file(path: Path, old: bytes, new: bytes) -> bool:
    """Rewrite a recovery file durably (temp file, fsync, rename). A file a worker replayed and removed in
    the meantime is not brought back (and one that would be is dropped by the next claim as superseded)."""
    try:
        if path.read_bytes() != old:
            return False
    except FileNotFoundError:
        return True
    write_private_file(path, new)
    return True


def _ensure_fingerprint_key(store: SQLStore, crypto: Crypto) -> None:
    """Persist the fingerprint key before any rewrite, so it outlives the key it was derived from."""
    sealed = crypto.sealed_fingerprint_key(aad=FINGERPRINT_AAD)
    with store._tx() as conn:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('fingerprint_key', ?) ON CONFLICT (key) DO NOTHING", (sealed,)
        )


def _rewrite(store: SQLStore, crypto: Crypto, cell: Cell, old: bytes | None) -> bool:
    """Re-encrypt one value with the primary key; True if this call changed it. A refresh that committed
    since `old` was read wins the compare-and-set; the value is then read again."""
    for _ in range(_CAS_TRIES):
        if old is None or crypto.is_current(old):
            return False
        if _write_cell(store, cell, old, crypto.reencrypt(old, aad=cell.aad)):
            return True
        old = _read_cell(store, cell)
    return False


def crypto_of(store: SQLStore) -> Crypto:
    """The store's key ring (key ids, primary key, where it was read from)."""
    return store._crypto


def census(store: SQLStore) -> dict[str, int]:
    """How many stored values each key id encrypts (FORMAT_1 for values written before key ids)."""
    crypto = store._crypto
    return dict(Counter(crypto.key_id_of(blob) or FORMAT_1 for _, blob in _values(store)))


def rotate(store: SQLStore, *, progress: Progress | None = None) -> RotationResult:
    """Re-encrypt every value of `store` with its ring's primary key; safe to interrupt and run again.

    `progress(done, total)` is called after each value.
    """
    crypto = store._crypto
    _ensure_fingerprint_key(store, crypto)
    total = _count(store)
    rewritten = done = 0
    for cell, blob in _values(store):
        rewritten += _rewrite(store, crypto, cell, blob)
        done += 1
        if progress is not None:
            progress(done, max(total, done))
    return RotationResult(primary=crypto.key_id, rewritten=rewritten, total=done, usage=census(store))
