"""The multi-host store: PostgreSQL through psycopg 3 and a psycopg_pool connection pool.

The grant logic is `grantkeeper.stores.sql`, shared with SQLite. What is PostgreSQL's own (docs/postgres.md):

* Claims lock the grant row (``SELECT ... FOR UPDATE OF grants``) for the few milliseconds of the claim
  transaction; the lease itself is a row with an expiry, so no session state outlives a transaction and the
  store works through pooled connections and PgBouncer in transaction mode.
* Leases are timed by the workers' clocks (the injected `Clock`, like everything else), so hosts must keep
  their clocks in sync (NTP); `open` compares this host's clock with the server's and warns past 1 s.
* Commits and invalidations send ``NOTIFY grantkeeper`` inside the transaction; a listener thread per store
  wakes waiting workers and lets keepers drop cached access tokens. If the listener is disconnected, waiters
  fall back to polling.
* Each process holds a session advisory lock on one dedicated connection (opened at its first claim) while it
  lives; a lease records it, so a claim that finds the holder's lock gone (``pg_locks``) takes the lease over
  at once (`grantkeeper.stores.liveness`). That one connection needs a real session: point it past a
  transaction-mode pooler, or it only ever reads as alive and dead holders' leases are waited out.
* Single-statement reads run in autocommit (one round trip); writes run in explicit transactions. A read that
  fails on a dropped connection is retried once on a fresh one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from grantkeeper._exceptions import (
    ConfigurationError,
    GrantkeeperError,
    StoreFormatError,
    StoreUnavailable,
)
from grantkeeper._fsutil import make_private_dirs
from grantkeeper.keys.crypto import Crypto
from grantkeeper.keys.rekey import KEY_CHECK_AAD, unlock
from grantkeeper.keys.sources import load_ring
from grantkeeper.stores.liveness import AdvisoryLiveness
from grantkeeper.stores.migrations import latest_version, migrations
from grantkeeper.stores.recovery import RecoveryDir
from grantkeeper.stores.sql import API_KEYS_CHANGED, KEY_CHECK, Conn, SQLStore, Subscriber
from grantkeeper.stores.transactions import Op, Sql, Tx, perform

try:
    import psycopg
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError("the PostgreSQL store needs psycopg: pip install 'grantkeeper[postgres]'") from exc

__all__ = ["PostgresSQL", "PostgresStore", "check_schema"]

logger = logging.getLogger("grantkeeper")
T = TypeVar("T")

CHANNEL = "grantkeeper"
RECOVERY_ENV = "GRANTKEEPER_RECOVERY_DIR"
_SESSION_OPTIONS = (
    # Bounded waits everywhere: a stuck lock or a dead client's open transaction cannot hang other hosts.
    "-c lock_timeout=5000 -c statement_timeout=15000 -c idle_in_transaction_session_timeout=15000"
)
_SKEW_WARNING = 1.0  # seconds
_OUR_TABLES = ("meta", "providers", "grants", "leases", "attempts")


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    return sql.replace("?", "%s")


class PgConn:
    """psycopg speaks ``%s``; the shared SQL is written with ``?``. In a pipelined transaction (`pipeline` set),
    `run` sends a statement marked ``wait=False`` without waiting for its result: it travels with the next one.
    The statements whose results nobody reads (``Sql.read`` false) share one cursor: in pipeline mode a new cursor
    per statement cost about 45 us of CPU against 15-20 us for one reused (psycopg 3.3)."""

    __slots__ = ("_conn", "_unread", "pipeline")

    def __init__(self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline | None = None) -> None:
        self._conn = conn
        self.pipeline = pipeline
        self._unread: psycopg.Cursor[Any] | None = None

    def execute(self, sql: str, params: Any = (), /) -> Any:
        return self._conn.execute(translate(sql), params)

    def run(self, step: Sql) -> Any:
        if self.pipeline is None:
            return self._conn.execute(translate(step.text), step.params)
        if step.read:
            cursor = self._conn.execute(translate(step.text), step.params)
        else:
            if self._unread is None:
                self._unread = self._conn.cursor()
            cursor = self._unread.execute(translate(step.text), step.params)
        if step.wait:
            self.pipeline.sync()  # this statement's result is needed now: send everything queued, read the results
        return cursor


def map_error(exc: Exception, where: str) -> GrantkeeperError:
    """One seam for psycopg errors (most specific first)."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return StoreFormatError(
            f"{where} has no grantkeeper schema (or an incomplete one); run 'grantkeeper migrate' against it"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ConfigurationError(f"{where}: the database user lacks a privilege grantkeeper needs ({exc})")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreUnavailable(f"no connection to {where} within the pool timeout; is the database up?")
    return StoreUnavailable(f"PostgreSQL store {where} cannot be used right now: {type(exc).__name__}: {exc}")


class _Listener:
    """One LISTEN connection per store: wakes waiters and tells subscribers of other workers' commits."""

    def __init__(self, url: str, dispatch: Callable[[str], None]) -> None:
        self._url = url
        self._dispatch = dispatch
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.epoch = 0  # connections made: notifications sent while none was listening are lost between two
        self._thread = threading.Thread(target=self._run, name="grantkeeper-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.epoch += 1
                    self.connected.set()
                    backoff = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.1):  # short, so close() returns quickly
                            self._dispatch(note.payload)
            except psycopg.Error as exc:
                if self.connected.is_set():
                    logger.warning("grantkeeper: lost the LISTEN connection (%s); polling until it is back", exc)
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self.connected.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)


class Announcements:
    """What NOTIFY has announced so far, per grant: the newest generation and how many events (commits, releases,
    invalidations). A waiter notes `events` before it waits and asks `moved` after each wake-up."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}
        self._events: dict[str, int] = {}

    def record(self, payload: str) -> tuple[str, int, str] | None:
        """Count one notification; its (grant, generation, kind), or None (logged) if it is not ours."""
        try:
            note = json.loads(payload)
            name, generation, kind = str(note["g"]), int(note["n"]), str(note["k"])
        except (ValueError, KeyError, TypeError):
            logger.warning("grantkeeper: ignoring a malformed notification on channel %s", CHANNEL)
            return None
        self._latest[name] = max(generation, self._latest.get(name, -1))
        self._events[name] = self._events.get(name, 0) + 1
        return name, generation, kind

    def events(self, name: str) -> int:
        return self._events.get(name, 0)

    def moved(self, name: str, generation: int | None, events: int) -> bool:
        """Whether grant `name` was announced past `generation`, or had any event since `events` was read."""
        return (
            self._latest.get(name, -1) > (generation if generation is not None else -1) or self.events(name) != events
        )


def tell_subscribers(subscribers: list[Subscriber], note: tuple[str, int, str]) -> None:
    for subscriber in list(subscribers):
        try:
            subscriber(*note)
        except Exception:  # a subscriber's bug must not kill the listener
            logger.exception("grantkeeper: a store subscriber failed")


class PostgresSQL(SQLStore):
    """The grant logic with PostgreSQL's hooks, whatever runs it: the claim's row lock, recovery storage per host,
    commits announced with NOTIFY, liveness by advisory locks. `PostgresStore` runs it on a blocking pool; the
    async store (`grantkeeper.stores.postgres_async`) on an asyncio one."""

    _row_lock = " FOR UPDATE OF grants"
    _skip_locked = " FOR UPDATE OF grants SKIP LOCKED"
    _shared_recovery = False  # each host keeps its own

    def __init__(self, url: str, crypto: Crypto, recovery: RecoveryDir) -> None:
        super().__init__(crypto, recovery, AdvisoryLiveness(functools.partial(_connect_liveness, url)))
        self.url = url

    def _notify(self, name: str, generation: int, kind: str) -> Tx[None]:
        yield Sql("SELECT pg_notify(?, ?)", (CHANNEL, json.dumps({"g": name, "n": generation, "k": kind})), wait=False)


def pool_options(connect_timeout: float) -> dict[str, Any]:
    """Every pooled connection's options: autocommit (transactions are explicit), bounded waits."""
    return {"autocommit": True, "connect_timeout": max(1, int(connect_timeout)), "options": _SESSION_OPTIONS}


def open_crypto_and_recovery(url: str) -> tuple[Crypto, RecoveryDir]:
    """The key ring ($GRANTKEEPER_KEY or $GRANTKEEPER_KEY_COMMAND) and this host's recovery storage for `url`."""
    keys, source = load_ring(None, create=False)
    crypto = Crypto(keys, source=source)
    return crypto, RecoveryDir(_recovery_path(url), crypto)


class PostgresStore(PostgresSQL):
    """Open with `PostgresStore.open(url)`; the schema must exist (`grantkeeper migrate`)."""

    #: Transactions that write run in pipeline mode: a statement whose result the operation does not read (the
    #: BEGIN, the lease release, NOTIFY, the COMMIT) travels with the next one instead of costing a round trip of
    #: its own. False runs every statement on its own (the benchmark's "before" row).
    pipelined = True
    _batch_side_by_side = True

    def __init__(self, url: str, crypto: Crypto, recovery: RecoveryDir, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        super().__init__(url, crypto, recovery)
        self._where = safe_url(url)
        self._pool = pool
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._changed = threading.Condition()
        self._announced = Announcements()
        self._key_changes = 0  # API-key changes announced by NOTIFY (only the listener thread writes it)
        self._closed = False

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = False, max_connections: int = 10, connect_timeout: float = 5.0
    ) -> PostgresStore:
        crypto, recovery = open_crypto_and_recovery(url)
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, timeout=connect_timeout,
            kwargs=pool_options(connect_timeout),
        )  # fmt: skip
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise StoreUnavailable(f"cannot connect to {safe_url(url)}: {exc}") from None
        store = cls(url, crypto, recovery, pool)
        try:
            store._check_schema(migrate=migrate)
        except BaseException:
            store.close()
            raise
        return store

    def _check_schema(self, *, migrate: bool) -> None:
        with self._tx() as conn:
            check_schema(conn, self._crypto, self._where, migrate=migrate)

    def schema_version(self) -> int:
        row = self._read(lambda conn: conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone())
        return int(bytes(row[0]).decode())

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        if self.liveness is not None:
            self.liveness.close()
        self._pool.close()

    # ---------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _tx(self, *, write: bool = True, pipelined: bool = False) -> Iterator[PgConn]:
        if self._closed:
            raise ConfigurationError("this store is closed; open a new one")
        try:
            with self._pool.connection() as conn:
                if not write:
                    yield PgConn(conn)  # autocommit: one statement, one round trip
                elif pipelined:
                    with conn.pipeline() as pipeline:
                        # BEGIN and COMMIT by hand: psycopg's transaction() waits for each of them in pipeline mode.
                        # The COMMIT's answer is read when the pipeline ends: before this returns, so it is durable.
                        conn.execute("BEGIN")
                        try:
                            yield PgConn(conn, pipeline)
                        except BaseException:
                            with contextlib.suppress(psycopg.Error):
                                pipeline.sync()  # out of the aborted state, if a statement failed
                            conn.execute("ROLLBACK")
                            raise
                        conn.execute("COMMIT")
                else:
                    with conn.transaction():
                        yield PgConn(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise map_error(exc, self._where) from None

    def _perform(self, fn: Callable[..., Op[T]], write: bool, /, *args: Any, **kwargs: Any) -> T:
        """Operations that write run pipelined (`pipelined`); reads are retried once (`_retried`)."""
        if write:
            return perform(fn(self, *args, **kwargs), *self._writer())
        return self._retried(lambda: perform(fn(self, *args, **kwargs), lambda: self._tx(write=False), PgConn.run))

    def _writer(self) -> tuple[Callable[[], AbstractContextManager[Any]], Callable[[Any, Sql], Any]]:
        return lambda: self._tx(pipelined=self.pipelined), PgConn.run

    def _read(self, fn: Callable[[Conn], T]) -> T:
        return self._retried(lambda: super(PostgresStore, self)._read(fn))

    def _retried(self, read: Callable[[], T]) -> T:
        """Reads are idempotent: one that fails on a connection the server dropped is retried on a fresh one."""
        try:
            return read()
        except StoreUnavailable:
            self._pool.check()  # replace every broken idle connection before trying again
            return read()

    # ---------------------------------------------------------------- notifications

    def _ensure_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self.url, self._on_notify)
            return self._listener

    def _on_notify(self, payload: str) -> None:
        with self._changed:
            note = self._announced.record(payload)
            self._changed.notify_all()
        if note is not None and note[2] == API_KEYS_CHANGED:
            self._key_changes += 1
        elif note is not None:
            tell_subscribers(self._subscribers, note)

    def subscribe(self, subscriber: Callable[[str, int, str], None]) -> None:
        super().subscribe(subscriber)
        self._ensure_listener()

    # ---------------------------------------------------------------- API keys (`grantkeeper serve`)

    def change_probe(self) -> Callable[[], object] | None:
        """What this store's LISTEN connection has heard of API-key changes: ``create_api_key`` and
        ``revoke_api_key`` send a NOTIFY inside their transaction, so a value read before a key record stays
        the same until a change to any key committed after that read has been announced. While the listener is
        not connected every call returns a new object (equal to nothing: the reader reads the store each time),
        and each reconnection starts a new epoch (what was announced while nobody listened is lost). Grant
        writes do not change the value: this probe is for API-key readers only."""
        listener = self._ensure_listener()

        def probe() -> object:
            if not listener.connected.is_set():
                return object()
            return (listener.epoch, self._key_changes)  # the epoch is raised before `connected` is set

        return probe

    def wait_for_change(self, name: str, *, poll: float, longest: float, generation: int | None = None) -> None:
        """Wake when NOTIFY announces a generation newer than `generation` or any event for `name`, or after
        `longest` (capped at 1 s, so a notification lost in a reconnect costs at most that); poll when the
        listener is down."""
        listener = self._ensure_listener()
        if not listener.connected.is_set():
            time.sleep(poll)
            return
        deadline = time.monotonic() + min(longest, 1.0)
        with self._changed:
            events = self._announced.events(name)
            while not self._announced.moved(name, generation, events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)


def check_schema(conn: Conn, crypto: Crypto, where: str, *, migrate: bool) -> None:
    """In one transaction on `conn`: the schema is grantkeeper's and current (created or upgraded if `migrate`),
    the key ring opens it, and this host's clock agrees with the server's (a warning past 1 s)."""
    latest = latest_version("postgres")
    # One migrator at a time across hosts; released at commit.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('grantkeeper migrate'))")
    present = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name = ANY(?)",
            (list(_OUR_TABLES),),
        ).fetchall()
    }
    version = 0
    if "meta" in present:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        app = conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
        if row is None or app is None or bytes(app[0]) != b"grantkeeper":
            raise StoreFormatError(f"{where} has a 'meta' table that grantkeeper did not write")
        version = int(bytes(row[0]).decode())
    elif present:
        raise StoreFormatError(
            f"{where} already has tables named {sorted(present)} that grantkeeper did not create; "
            "use a dedicated database (or a dedicated schema via search_path)"
        )
    if version > latest:
        raise StoreFormatError(
            f"{where} has schema version {version}, newer than this grantkeeper understands "
            f"({latest}); upgrade grantkeeper"
        )
    if version < latest:
        if not migrate:
            hint = "is empty" if version == 0 else f"has schema version {version}"
            raise StoreFormatError(
                f"{where} {hint}; this grantkeeper needs schema version {latest}. Run "
                "'grantkeeper migrate' (back the database up first)"
            )
        for number, sql in migrations("postgres"):
            if number > version:
                conn.execute(sql)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?), ('application', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(latest).encode(), b"grantkeeper"),
        )
        if version == 0:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?)",
                (crypto.encrypt_bytes(KEY_CHECK, aad=KEY_CHECK_AAD),),
            )
    unlock(conn, crypto, where=where)
    server_now = float(conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()[0])
    skew = time.time() - server_now
    if abs(skew) > _SKEW_WARNING:
        logger.warning(
            "grantkeeper: this host's clock is %.1f s %s the database server's; leases and expiry assume "
            "synchronized clocks (run NTP)", abs(skew), "ahead of" if skew > 0 else "behind",
        )  # fmt: skip


def _connect_liveness(url: str) -> psycopg.Connection[Any]:
    """The connection that holds this process's liveness lock: its own session, outside the pool, so the lock
    lives exactly as long as the process (or its host) does."""
    return psycopg.connect(url, autocommit=True, connect_timeout=5, application_name="grantkeeper liveness")


def _recovery_path(url: str) -> Path:
    """Local recovery storage for this database: $GRANTKEEPER_RECOVERY_DIR, else under the user data dir."""
    base = os.environ.get(RECOVERY_ENV)
    parts = urlsplit(url)
    identity = f"{parts.hostname}:{parts.port}/{parts.path.lstrip('/')}"
    tag = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(base) if base else Path(platformdirs.user_data_dir("grantkeeper")) / "recovery"
    make_private_dirs(root)
    return root / tag
