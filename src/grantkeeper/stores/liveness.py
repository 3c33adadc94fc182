"""Whether a lease holder's process still exists, from a signal the kernel or the database releases on death.

A worker that takes a lease first holds its liveness signal, and the lease row records the signal's key.
Another worker that finds the lease unexpired asks whether the signal is still held: if not, the holder is
dead (killed, OOM, host gone) and its lease is taken over at once instead of after its TTL. A holder that
is alive but slow, stopped (SIGSTOP) or waiting on the network still holds its signal and is waited for.

* `FileLiveness` (SQLite, one host): each worker holds a shared ``flock`` on a file named after it in a
  directory beside the store. The kernel drops the lock when the last descriptor of the holding process
  closes, which death guarantees. A checker probes with a non-blocking exclusive ``flock``: it gets the
  lock only if no process holds the file. ``flock`` is per open file, not per pid, so it works across pid
  namespaces (containers that share a host name and a bind-mounted store directory) where a pid check
  would ask the wrong process table.
* `AdvisoryLiveness` (PostgreSQL, many hosts): each worker holds a shared session advisory lock on a
  dedicated connection. The server drops it when that session ends: the holder died and the kernel closed
  its socket, or its host is gone and the server noticed. A checker reads ``pg_locks``, which answers the
  same from any session, pooled or not.

The answers are ``True`` (held: alive), ``False`` (free: dead) and ``None`` (cannot tell: no signal
recorded, the file is missing, the key is malformed). Only ``False`` ever shortens a wait; ``None`` falls
back to the lease TTL. A signal can read as held after its holder died (a forked child inherited the
descriptor, a pooler keeps the server session): that only costs the TTL, never a second holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import select
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from grantkeeper.stores.transactions import Sql, Tx, run_on

__all__ = ["AdvisoryLiveness", "FileLiveness", "Liveness", "file_key", "pg_key"]

logger = logging.getLogger("grantkeeper")

#: The first key of every grantkeeper liveness advisory lock (two-int form): keeps them apart from other
#: applications' advisory locks on the same database. "gkli" in ASCII.
PG_CLASS = 0x676B6C69
_FILE_KEY = re.compile(r"flock:([0-9a-f]{32})")
_PG_KEY = re.compile(r"pg:([0-9]{1,10})")
_SWEEP_AGE = 3600.0  # seconds: an unlocked file this old belongs to a worker long dead
_SWEEP_LIMIT = 200  # files looked at per sweep, so a crowded directory cannot slow a start-up down
_PG_VERIFY_EVERY = 5.0  # seconds between checks that the liveness session is still connected


class Liveness(Protocol):
    """One store's liveness signals: the ones its workers hold, and probes of other workers'."""

    def hold(self, worker: str) -> str | None:
        """Hold `worker`'s signal from now until `close` (idempotent); its key for the lease row, or None if
        no signal can be held right now (the lease then falls back to its TTL)."""
        ...

    def alive(self, conn: Any, key: str) -> bool | None:
        """Whether the signal `key` is held by some process; `conn` is the claim's connection."""
        ...

    def probe(self, key: str) -> Tx[bool | None]:
        """`alive`, as statements of the claim's transaction (see `grantkeeper.stores.transactions`)."""
        ...

    def key_for(self, worker: str) -> str:
        """The key `worker`'s signal has (whether or not it is held)."""
        ...

    def close(self) -> None: ...


def file_key(worker: str) -> str:
    return "flock:" + hashlib.sha256(worker.encode()).hexdigest()[:32]


def pg_key(worker: str) -> str:
    # Non-negative int4, so pg_locks shows it unchanged in its oid column.
    return f"pg:{int.from_bytes(hashlib.sha256(worker.encode()).digest()[:4], 'big') & 0x7FFFFFFF}"


class FileLiveness:
    """flock-based signals in `directory` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._held: dict[str, tuple[str, int]] = {}  # worker -> (key, descriptor holding the shared lock)
        self._lock = threading.Lock()

    def key_for(self, worker: str) -> str:
        return file_key(worker)

    def _path(self, key: str) -> Path | None:
        match = _FILE_KEY.fullmatch(key)
        return self._dir / match.group(1) if match else None

    def hold(self, worker: str) -> str | None:
        with self._lock:
            held = self._held.get(worker)
            if held is not None:
                return held[0]
            key = file_key(worker)
            path = self._path(key)
            assert path is not None
            try:
                self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not self._held:
                    self._sweep()
                fd = _lock_linked(path)
            except OSError as exc:
                logger.warning("grantkeeper: no liveness file for this worker in %s (%s); other workers will "
                               "wait for its leases to expire if it dies", self._dir, exc)  # fmt: skip
                return None
            self._held[worker] = (key, fd)
            return key

    def probe(self, key: str) -> Tx[bool | None]:
        yield from ()  # a file lock, not a statement
        return self.alive(None, key)

    def alive(self, conn: Any, key: str) -> bool | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # never created here (another mount of the store?) or swept: cannot tell
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)  # also drops the probe's lock, if it got it
        return False

    def _sweep(self) -> None:
        """Remove files of workers that died long ago (their lock is free and the file is old)."""
        cutoff = time.time() - _SWEEP_AGE
        with contextlib.suppress(OSError), os.scandir(self._dir) as entries:
            for i, entry in enumerate(entries):
                if i >= _SWEEP_LIMIT:
                    break
                if not _FILE_KEY.fullmatch("flock:" + entry.name):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime >= cutoff:
                        continue
                    fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        os.unlink(entry.path)  # under the exclusive lock: nobody holds it
                    finally:
                        os.close(fd)

    def close(self) -> None:
        """Release every signal; the files go too (under their lock), so clean exits leave nothing behind. A
        holder's lease that outlives this (kept when the store refused a commit) then reads "unknown": waited out."""
        with self._lock:
            for key, fd in self._held.values():
                path = self._path(key)
                with contextlib.suppress(OSError):
                    # Only if nobody else holds it (another process with the same worker id): exclusive or nothing.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if path is not None and os.fstat(fd).st_ino == os.stat(path).st_ino:
                        os.unlink(path)
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._held.clear()


def _lock_linked(path: Path) -> int:
    """Open `path` (creating it) and hold a shared flock on it; retried until the locked file is the one the
    path names, since a sweeper may unlink the file between our open and our lock."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.utime(fd)  # fresh mtime: sweepers leave recently used files alone
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(f"could not lock {path}: it keeps being removed")


class _NotHeld(Exception):
    pass


class _RawConn:
    """The shared ``?`` placeholders over a raw psycopg connection (the store's adapter does this for claims)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), params)


class AdvisoryLiveness:
    """Session advisory locks on one dedicated connection (see the module docstring).

    `connect` opens that connection (autocommit). It is opened on the first `hold`, checked at most every few
    seconds, and reopened (re-taking every held lock) if the server dropped it; while it is down `hold`
    returns None, so leases taken meanwhile fall back to their TTL instead of advertising a signal nobody holds.
    """

    _CHECK = (
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = CAST(CAST(? AS BIGINT) AS oid) AND objid = CAST(CAST(? AS BIGINT) AS oid))"
    )

    def __init__(self, connect: Any) -> None:
        self._connect = connect
        self._conn: Any = None
        self._keys: dict[str, str] = {}  # worker -> key, every signal this store should hold
        self._verified = 0.0
        self._lock = threading.Lock()

    def key_for(self, worker: str) -> str:
        return pg_key(worker)

    def hold(self, worker: str) -> str | None:
        with self._lock:
            key = pg_key(worker)
            fresh = worker not in self._keys
            self._keys[worker] = key
            try:
                if self._conn is None or self._conn.closed or self._disturbed() or self._stale():
                    self._reconnect()
                elif fresh:
                    self._take(key)
                    self._verify()
            except _NotHeld as exc:
                self._drop()
                logger.warning("grantkeeper: %s; leases taken now fall back to their TTL", exc)
                return None
            except Exception as exc:  # psycopg.Error and OSError alike: no signal, the TTL still protects
                self._drop()
                logger.warning("grantkeeper: the liveness session is down (%s: %s); leases taken now fall back "
                               "to their TTL", type(exc).__name__, exc)  # fmt: skip
                return None
            return key

    def _disturbed(self) -> bool:
        """Whether the server said something on the idle session: at this point that is its goodbye (a restart,
        ``pg_terminate_backend``) or its closing the socket. A zero-timeout poll: no round trip on every claim."""
        try:
            return bool(select.select([self._conn.fileno()], [], [], 0)[0])
        except (OSError, ValueError):
            return True
        except Exception:  # psycopg raises its own error for a closed connection's fileno()
            return True

    def _stale(self) -> bool:
        if time.monotonic() - self._verified < _PG_VERIFY_EVERY:
            return False
        try:
            self._verify()
        except Exception:
            return True
        return False

    def _reconnect(self) -> None:
        """A new session takes every lock before the old one goes: a live worker never reads as dead meanwhile."""
        old, self._conn = self._conn, self._connect()
        try:
            with contextlib.suppress(Exception):  # PostgreSQL < 14 has no such setting; nothing to undo there
                self._conn.execute("SET idle_session_timeout = 0")
            for key in set(self._keys.values()):
                self._take(key)
        finally:
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
        self._verify()

    def _take(self, key: str) -> None:
        self._conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", (PG_CLASS, int(key.removeprefix("pg:"))))

    def _verify(self) -> None:
        """Every lock we took must be visible in pg_locks from a separate statement. It is not behind a
        transaction-mode pooler that resets sessions (``DISCARD ALL`` drops advisory locks): recording a key
        nobody holds would let others take a live worker's lease, so such a setup gets no signal at all."""
        for key in set(self._keys.values()):
            if not self.alive(_RawConn(self._conn), key):
                raise _NotHeld(
                    f"the liveness lock {key} is not held after taking it (is the store behind a pooler that resets "
                    "sessions? point it at the server or a session-mode pool)"
                )
        self._verified = time.monotonic()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def alive(self, conn: Any, key: str) -> bool | None:
        return run_on(conn, self.probe(key))

    def probe(self, key: str) -> Tx[bool | None]:
        match = _PG_KEY.fullmatch(key)
        if match is None:
            return None
        row = (yield Sql(self._CHECK, (PG_CLASS, int(match.group(1))))).fetchone()
        return bool(row[0])

    def close(self) -> None:
        with self._lock:
            self._drop()  # closing the session releases every lock it holds
            self._keys.clear()
