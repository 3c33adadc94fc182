"""The embedded default store: one SQLite file, WAL, ``synchronous=FULL``.

Writes use ``BEGIN IMMEDIATE`` so that the lease check and the write happen under SQLite's single writer
lock; with ``synchronous=FULL`` a returned commit is on disk. Each thread has its own connection. The
``memory://`` store is this class over one private in-memory database shared by the process's threads
under a lock: the same SQL, so unit tests exercise the real statements. The grant logic itself is in
`grantkeeper.stores.sql`, shared with the PostgreSQL store.

The key is checked at open against a sealed marker so a wrong key fails loudly before anything is read or
written. There are no cross-process notifications: waiters poll (`wait_for_change` sleeps).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from grantkeeper._exceptions import ConfigurationError, StoreFormatError, StoreUnavailable
from grantkeeper.crypto import Crypto
from grantkeeper.keyring import load_ring
from grantkeeper.stores.liveness import FileLiveness
from grantkeeper.stores.migrations import latest_version, migrations
from grantkeeper.stores.recovery import RecoveryDir
from grantkeeper.stores.rekey import KEY_CHECK_AAD, unlock
from grantkeeper.stores.sql import KEY_CHECK, SQLStore

__all__ = ["SQLiteStore"]

_APPLICATION_ID = 0x676B6565  # "gkee": marks the file as a grantkeeper store


def _check_is_grantkeeper_store(path: Path) -> None:
    """Refuse a file that is not SQLite, or SQLite written by something else, without changing it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _map_error(exc, str(path)) from None
    if app_id != _APPLICATION_ID and (app_id != 0 or tables != 0):
        raise StoreFormatError(
            f"{path} is an SQLite database but not a grantkeeper store; refusing to touch it. Choose another "
            "--store path"
        )


def _map_error(exc: sqlite3.Error, path: str) -> Exception:
    """One seam for sqlite3 errors: corruption is a format error, everything else is unavailability."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "encrypted" in text
    ):
        return StoreFormatError(
            f"{path} is not a readable SQLite database ({text}); point --store at a grantkeeper store or "
            "restore it from a backup"
        )
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return StoreUnavailable(f"SQLite store {path} cannot be used right now: {text}; retry later")
    return exc


class SQLiteStore(SQLStore):
    """See the module docstring. Open with `SQLiteStore.open`; close with `close()`."""

    def __init__(self, path: Path | None, crypto: Crypto, *, busy_timeout: float, lock: threading.RLock | None) -> None:
        recovery = RecoveryDir(path.with_name(path.name + ".recovery") if path is not None else None, crypto)
        # Every process that opens the file is on this host (WAL needs shared memory), so a flock beside it
        # tells a dead lease holder from a live one. A memory store lives in one process: nothing to tell.
        liveness = FileLiveness(path.with_name(path.name + ".live")) if path is not None else None
        super().__init__(crypto, recovery, liveness)
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # The in-memory database is one connection: serialize all use of it.
        self._lock = lock
        self._closed = False
        self._active = 0  # transactions in progress, across threads
        self._idle = threading.Condition()

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, path: Path | None, *, create: bool = True, busy_timeout: float = 5.0, migrate: bool = False
    ) -> SQLiteStore:
        """Open (and with `create`, initialise) the store at `path`; None is a private in-memory store."""
        if path is None:
            store = cls(None, Crypto(os.urandom(32)), busy_timeout=busy_timeout, lock=threading.RLock())
            store._initialise()
            return store
        exists = path.exists()
        if not exists and not create:
            raise ConfigurationError(f"no grantkeeper store at {path}; create one with 'grantkeeper provider add'")
        if not exists:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if exists:
            _check_is_grantkeeper_store(path)  # before the key: a foreign file is a format problem, not a key one
        keys, source = load_ring(path.with_name(path.name + ".key"), create=not exists)
        if not exists:
            # Created owner-only before SQLite opens it; the WAL and shm files inherit the database's mode.
            with contextlib.suppress(FileExistsError):  # another process is creating it right now
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        store = cls(path, Crypto(keys, source=source), busy_timeout=busy_timeout, lock=None)
        try:
            store._initialise(migrate=migrate)
        except BaseException:
            store.close()
            raise
        return store

    def _initialise(self, *, migrate: bool = False) -> None:
        conn = self._conn()
        where = str(self.path or "memory://")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        except sqlite3.Error as exc:
            raise _map_error(exc, where) from None
        if app_id == 0 and tables == 0:
            # Several processes may create the same store at once: the first to take the write lock builds the
            # whole schema and the key check in one transaction; the others then find a finished store.
            self._migrate(conn, from_version=0, key_check=self._crypto.encrypt_bytes(KEY_CHECK, aad=KEY_CHECK_AAD))
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != _APPLICATION_ID:
            raise StoreFormatError(
                f"{where} is an SQLite database but not a grantkeeper store; refusing to touch it. Choose "
                "another --store path"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        latest = latest_version("sqlite")
        if version > latest:
            raise StoreFormatError(
                f"{where} has schema version {version}, newer than this grantkeeper understands ({latest}); "
                "upgrade grantkeeper"
            )
        if version < latest:
            if not migrate:
                raise StoreFormatError(
                    f"{where} has schema version {version}; this grantkeeper needs {latest}. Back it up, then "
                    "run 'grantkeeper migrate'"
                )
            self._migrate(conn, from_version=version)
        unlock(conn, self._crypto, where=where)

    def _migrate(self, conn: sqlite3.Connection, *, from_version: int, key_check: bytes | None = None) -> None:
        """Apply the migrations after `from_version` in one transaction; with `key_check`, create the store.

        The version is read again under the write lock: another process may have created or migrated the store
        since `from_version` was read, and its work must not be applied twice. DDL and both pragmas are
        transactional in SQLite, so nobody ever sees a half-built schema.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current == from_version:
                for version, sql in migrations("sqlite"):
                    if version <= from_version:
                        continue
                    for statement in filter(str.strip, sql.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {int(version)}")
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                if key_check is not None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (key_check,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # ---------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigurationError("this store is closed; open a new one")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None and self._lock is not None and self._connections:
            conn = self._connections[0]
        if conn is None:
            target = str(self.path) if self.path is not None else ":memory:"
            try:
                conn = sqlite3.connect(
                    target, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
                )
                if self.path is not None:
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error as exc:
                raise _map_error(exc, target) from None
            with self._connections_lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; sqlite3 errors leave it as grantkeeper errors, after a rollback."""
        guard = self._lock if self._lock is not None else contextlib.nullcontext()
        with guard, self._in_use():
            conn = self._conn()
            if not write:
                # Reads are single statements, atomic on their own in autocommit mode: no BEGIN/COMMIT.
                try:
                    yield conn
                except sqlite3.Error as exc:
                    raise _map_error(exc, str(self.path)) from None
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _map_error(exc, str(self.path)) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _map_error(exc, str(self.path)) from None
                raise

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._idle:
            if self._closed:
                raise ConfigurationError("this store is closed; open a new one")
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Close every connection once no thread is inside a transaction (closing one under a running
        statement would crash the interpreter); new transactions are refused from now on."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout=self._busy_timeout + 30)
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        if self.liveness is not None:
            self.liveness.close()
