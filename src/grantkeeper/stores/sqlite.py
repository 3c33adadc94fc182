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

import asyncio
import contextlib
import errno
import os
import secrets
import shlex
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from grantkeeper import _failpoints
from grantkeeper._exceptions import ConfigurationError, StoreFormatError, StoreUnavailable
from grantkeeper._fsutil import fsync_dir, make_private_dirs
from grantkeeper.keys.crypto import Crypto
from grantkeeper.keys.rekey import KEY_CHECK_AAD, unlock
from grantkeeper.keys.sources import load_ring
from grantkeeper.model.grant import ServedToken
from grantkeeper.stores.liveness import FileLiveness
from grantkeeper.stores.migrations import latest_version, migrations
from grantkeeper.stores.recovery import RecoveryDir
from grantkeeper.stores.sql import KEY_CHECK, SERVED_ACCESS, SQLStore
from grantkeeper.stores.transactions import Blocking, Op, Sql, perform_batch_async

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_APPLICATION_ID = 0x676B6565  # "gkee": marks the file as a grantkeeper store
#: A batch of at most this many calls runs its statements on the event loop (`perform_batch_async`); a larger one
#: runs whole in the batch thread, so the loop is never held for more than a few milliseconds.
INLINE_BATCH_MOST = 64


def _check_is_grantkeeper_store(path: Path) -> None:
    """Refuse a file that is not SQLite, SQLite written by something else, or empty, without changing it.

    A new store is built under a temporary name and linked into place whole (`_create`), so an existing file
    with no grantkeeper schema was never one of ours being created: it is a store that was truncated or
    replaced, and initialising it again would silently forget every grant.
    """
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _map_error(exc, path) from None
    if app_id == 0 and tables == 0:
        raise _empty_store(path)
    if app_id != _APPLICATION_ID:
        raise StoreFormatError(
            f"{path} is an SQLite database but not a grantkeeper store; refusing to touch it. Choose another "
            "--store path"
        )


def _empty_store(path: Path) -> StoreFormatError:
    key_file = path.with_name(path.name + ".key")
    held = f" Its key file {key_file} exists, so this file held a store." if key_file.exists() else ""
    try:
        size = f"{path.stat().st_size} bytes"
    except OSError:
        size = "size unknown"
    return StoreFormatError(
        f"{path} is empty ({size}, no grantkeeper schema): the store was truncated or replaced.{held} Nothing "
        f"was changed: restore it from a backup, and keep {path.name}.recovery beside it if it is there (it may "
        "hold refresh tokens newer than the backup). To start a new, empty store instead, move this file away first"
    )


#: SQLite primary result codes (https://sqlite.org/rescode.html) by what the caller should do about them.
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_NOT_PERMITTED = {3, 8, 14, 23}  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_AUTH
_FULL = 13  # SQLITE_FULL


def _map_error(exc: sqlite3.Error, path: Path | str) -> Exception:
    """One seam for sqlite3 errors: damage and access problems are permanent (fix them, exit 3); only the rest
    (a lock held too long, an I/O hiccup, a full disk) is worth retrying."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if text.startswith("Could not decode to UTF-8"):
        # Raised by Python's sqlite3, not SQLite, with the undecodable bytes in the text: never show those.
        text = "a text value that is not UTF-8"
    elif primary in _DAMAGED or "malformed" in text or "no such table" in text or "no such column" in text:
        text = text.split(":")[0]
    else:
        if primary in _NOT_PERMITTED:
            return ConfigurationError(f"SQLite store {path} cannot be used: {text}; {_access_advice(Path(path))}")
        if primary == _FULL:
            return StoreUnavailable(
                f"SQLite store {path} cannot be written: the disk is full ({text}); free space on it, then retry"
            )
        return StoreUnavailable(f"SQLite store {path} cannot be used right now: {text}; retry later")
    quoted = shlex.quote(str(path))
    return StoreFormatError(
        f"{path} is not a readable SQLite database ({text}): it is damaged, or not a store at all; nothing was "
        f"changed. If it is your store, check "
        f"it with `sqlite3 {quoted} 'PRAGMA integrity_check'` and restore it from a backup; otherwise point "
        "--store at your store"
    )


def _access_advice(path: Path) -> str:
    """What to check when `path` cannot be reached, opened or written: the first thing in the way that shows."""
    directory = path.parent
    try:
        for ancestor in reversed((path.parent, *path.parent.parents)):
            if not ancestor.is_dir():
                return f"{ancestor} does not exist or is not a directory: create it, or fix the store URL"
            if not os.access(ancestor, os.X_OK):
                return f"this user cannot enter {ancestor}: fix that directory's owner or mode (it needs x)"
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            return (
                f"this user cannot read and write {directory} (SQLite creates {path.name}-wal and {path.name}-shm "
                "there): fix the directory's owner or mode (0700 for the owner)"
            )
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return f"this user cannot read and write {path}: fix its owner or mode (0600 for the owner)"
    except OSError as exc:
        return f"{directory} cannot be examined ({exc.strerror}): fix the owner and mode of it and its parents"
    return "check that this user can read and write the file and its directory, and that the disk is mounted writable"


def _store_file_exists(path: Path) -> bool:
    """Whether the store file is there; an error that says what to fix if that cannot even be found out."""
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:
        raise ConfigurationError(f"cannot reach the store {path}: {exc.strerror}; {_access_advice(path)}") from None
    if is_dir:
        raise ConfigurationError(
            f"the store URL names {path}, which is a directory; name a file in it, e.g. sqlite://{path}/grants.db"
        )
    if not exists and path.parent.exists() and not path.parent.is_dir():
        raise ConfigurationError(f"cannot use the store {path}: {path.parent} is a file, not a directory; fix the URL")
    return exists


class _Transaction:
    """`SQLiteStore._tx`: a plain context manager rather than a generator one, since every cold token read and
    both transactions of every refresh go through it.

    Reads are single statements, atomic on their own in autocommit mode: no BEGIN/COMMIT. Writes are ``BEGIN
    IMMEDIATE`` ... ``COMMIT``, rolled back on any exception.
    """

    __slots__ = ("_conn", "_store", "_write")

    def __init__(self, store: SQLiteStore, write: bool) -> None:
        self._store = store
        self._write = write

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        conn = store._enter()
        if self._write:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except BaseException as exc:
                store._leave()
                if isinstance(exc, sqlite3.Error):
                    raise _map_error(exc, str(store.path)) from None
                raise
        self._conn = conn
        return conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        store = self._store
        try:
            if self._write:
                if exc is None:
                    try:
                        self._conn.execute("COMMIT")
                    except BaseException as failed:
                        exc = failed
                if exc is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _map_error(exc, str(store.path)) from None
            if exc is not None and kind is None:  # the COMMIT itself failed with something other than sqlite3's
                raise exc
        finally:
            store._leave()


def _perform_read(op: Op[T], enter: Callable[[], sqlite3.Connection], leave: Callable[[], None]) -> T:
    """Run a store read: its statements on the connection `enter` gives (and `leave` gives back), a `Blocking`
    step with no connection held, as `transactions.perform` runs one."""
    try:
        step = next(op)
        while True:
            if type(step) is Sql:
                conn = enter()
                try:
                    while type(step) is Sql:
                        step = op.send(conn.execute(step.text, step.params))
                finally:
                    leave()
            else:
                step = op.send(step.fn(*step.args) if isinstance(step, Blocking) else None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; if the caller is cancelled meanwhile, `work` runs on to its end first and then the
    cancellation goes on."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller asked to stop and hears only that
        raise asyncio.CancelledError
    return task.result()


class SQLiteStore(SQLStore):
    """See the module docstring. Open with `SQLiteStore.open`; close with `close()`."""

    # BEGIN IMMEDIATE takes the write lock before the claim's first statement: nothing it reads can change
    # under it, so one statement reads what the claim needs (see SQLStore._claim_in_one_read).
    _claim_in_one_read = True
    # Without statistics (no ANALYZE has run: every store until an operator runs one) SQLite's planner reads the
    # scheduler's due query through the index on `state`, i.e. every active grant and a sort, each round: at a
    # million grants a full scan a round. The partial index answers it in order, reading only what is due.
    _next_due_index = " INDEXED BY grants_next_due"

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
        # The count's lock, and the condition `close` waits on for it to drop: `_enter`/`_leave` take the bare
        # lock (a C-level context manager; every store call takes it twice).
        self._count_lock = threading.Lock()
        self._idle = threading.Condition(self._count_lock)
        # `perform_batch_async`: one thread (so one connection, used by nothing else) for the batches' transactions,
        # and per event loop a lock, so one batch at a time uses that connection.
        self._batch_thread: ThreadPoolExecutor | None = None
        self._batch_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, path: Path | None, *, create: bool = True, busy_timeout: float = 5.0, migrate: bool = False
    ) -> SQLiteStore:
        """Open (and with `create`, initialise) the store at `path`; None is a private in-memory store."""
        if path is None:
            store = cls(None, Crypto(os.urandom(32)), busy_timeout=busy_timeout, lock=threading.RLock())
            store._initialise(fresh=True)
            return store
        exists = _store_file_exists(path)
        if not exists and not create:
            raise ConfigurationError(f"no grantkeeper store at {path}; create one with 'grantkeeper provider add'")
        key_file = path.with_name(path.name + ".key")
        if exists:
            _check_is_grantkeeper_store(path)  # before the key: a foreign file is a format problem, not a key one
            keys, source = load_ring(key_file, create=False)
        else:
            try:
                make_private_dirs(path.parent)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the store's directory {path.parent}: {exc.strerror}; {_access_advice(path)}"
                ) from None
            keys, source = load_ring(key_file, create=True)
            cls._create(path, Crypto(keys, source=source), busy_timeout=busy_timeout)
        store = cls(path, Crypto(keys, source=source), busy_timeout=busy_timeout, lock=None)
        try:
            store._initialise(migrate=migrate)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _create(cls, path: Path, crypto: Crypto, *, busy_timeout: float) -> None:
        """Build a new store under a temporary name and link it into place whole.

        Several processes may create the same store at once: the first link wins and the others use its store
        (they share the key file, created exclusively before this). Because `path` only ever appears complete,
        an existing file without the schema is damage, never a creation in progress (`_check_is_grantkeeper_store`).
        """
        draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            # Owner-only before SQLite opens it; the WAL and shm files take the database's mode.
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # the umask may have narrowed it so far that SQLite could not write
            finally:
                os.close(fd)
            store = cls(draft, crypto, busy_timeout=busy_timeout, lock=None)
            try:
                store._initialise(fresh=True)
                store._checkpoint()  # every page in the main file: only that file is linked into place
            finally:
                store.close()
            _failpoints.hit("private_file_written")
            try:
                os.link(draft, path)  # atomic, and never replaces a store another process created meanwhile
            except FileExistsError:
                return
            fsync_dir(path.parent)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the store {path}: {exc.strerror}; "
                + (
                    "the filesystem must support hard links (a new store is linked into place whole): put the "
                    "store on a local filesystem"
                    if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
                    else _access_advice(path)
                )
            ) from None
        finally:
            for leftover in (draft, draft.with_name(draft.name + "-wal"), draft.with_name(draft.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _checkpoint(self) -> None:
        try:
            busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            raise _map_error(exc, str(self.path)) from None
        if busy:
            raise StoreUnavailable(f"the new store {self.path} could not be checkpointed; retry")

    def _initialise(self, *, migrate: bool = False, fresh: bool = False) -> None:
        """Check (and with `fresh`, build) the schema, then the key. Only a store being created is `fresh`: an
        existing file without the schema was truncated or replaced and is refused."""
        conn = self._conn()
        where = str(self.path or "memory://")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if app_id == 0 and tables == 0:
                if not fresh:
                    assert self.path is not None  # a memory store is always fresh
                    raise _empty_store(self.path)
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
        except sqlite3.Error as exc:
            raise _map_error(exc, where) from None

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

    def _tx(self, *, write: bool = True) -> _Transaction:
        """One transaction; sqlite3 errors leave it as grantkeeper errors, after a rollback."""
        return _Transaction(self, write)

    def served_access(self, name: str, now: float) -> ServedToken | None:
        # `SQLStore.served_access` without an operation's runner: every cold token read makes it, its one statement
        # is a third of its cost, and the runner's generator and dispatch cost a fifth.
        conn = self._enter()
        try:
            row = conn.execute(SERVED_ACCESS, (name, now)).fetchone()
        except sqlite3.Error as exc:
            raise _map_error(exc, str(self.path)) from None
        finally:
            self._leave()
        return self._served_token(name, now, row)

    def _perform(self, fn: Callable[..., Op[T]], write: bool, /, *args: Any, **kwargs: Any) -> T:
        if write:
            return super()._perform(fn, write, *args, **kwargs)
        # A read (every cold token read is one): its statements run in autocommit on this thread's connection, each
        # atomic alone, so there is no transaction to open or end and the general runner's layers are skipped.
        try:
            return _perform_read(fn(self, *args, **kwargs), self._enter, self._leave)
        except sqlite3.Error as exc:
            raise _map_error(exc, str(self.path)) from None

    def _enter(self) -> sqlite3.Connection:
        """Count a transaction in (refused once the store is closed) and return this thread's connection."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            with self._count_lock:
                if self._closed:
                    raise ConfigurationError("this store is closed; open a new one")
                self._active += 1
            try:
                return self._conn()
            except BaseException:
                self._leave()
                raise
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _leave(self) -> None:
        with self._count_lock:
            self._active -= 1
            if self._closed:  # only `close` waits for the count to drop
                self._idle.notify_all()
        if self._lock is not None:
            self._lock.release()

    async def perform_batch_async(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """`perform_batch` for a caller on an event loop (the scheduler's group commit). A batch of up to
        `INLINE_BATCH_MOST` calls runs its statements on the loop, each a few microseconds, and awaits only its
        transaction's begin (the write lock), commit (the disk) or rollback in the store's batch thread: run whole
        in a thread instead, every statement would hand the interpreter lock to and from the loop, which costs more
        than the statement. A larger batch runs whole in the batch thread. Both use that thread's connection, one
        batch at a time. A caller cancelled meanwhile sees the cancellation once the batch has ended (as one run whole
        in a thread would): cut off at an edge, the transaction its thread began would never end, and keep the
        store's write lock from every other writer."""
        loop = asyncio.get_running_loop()
        with self._connections_lock:
            if self._batch_thread is None:
                self._batch_thread = ThreadPoolExecutor(1, thread_name_prefix="grantkeeper-batch")
            thread = self._batch_thread
            lock = self._batch_locks.setdefault(loop, asyncio.Lock())
            for other in [other for other in self._batch_locks if other.is_closed()]:
                del self._batch_locks[other]
        async with lock:
            if len(calls) > INLINE_BATCH_MOST:
                return await loop.run_in_executor(thread, self.perform_batch, calls)
            return await _to_the_end(
                perform_batch_async(
                    self._batch_ops(calls), *self._writer(), lambda edge: loop.run_in_executor(thread, edge)
                )
            )

    def change_probe(self) -> Callable[[], object] | None:
        """``PRAGMA data_version`` on a connection of its own that never writes, so every commit counts, this
        process's included (SQLite changes the value for commits by any other connection, in any process). The
        pragma opens a read transaction, which sees every commit finished before it. A memory store has a single
        connection, whose own commits do not change the value: it has no probe."""
        if self.path is None:
            return None
        try:
            conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        except sqlite3.Error as exc:
            raise _map_error(exc, str(self.path)) from None
        with self._connections_lock:
            self._connections.append(conn)  # closed with the store

        def probe() -> object:
            try:
                return conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                return object()  # unknown: equal to nothing, so whoever asked reads the store again

        return probe

    def close(self) -> None:
        """Close every connection once no thread is inside a transaction (closing one under a running
        statement would crash the interpreter); new transactions are refused from now on."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout=self._busy_timeout + 30)
        if self._batch_thread is not None:
            self._batch_thread.shutdown(wait=False)
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        if self.liveness is not None:
            self.liveness.close()
