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
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
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
from grantkeeper.stores.sql import KEY_CHECK, Conn, SQLStore

try:
    import psycopg
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError("the PostgreSQL store needs psycopg: pip install 'grantkeeper[postgres]'") from exc

if TYPE_CHECKING:
    from grantkeeper.stores.access import ApiKeyRecord

__all__ = ["PostgresStore"]

logger = logging.getLogger("grantkeeper")
T = TypeVar("T")

CHANNEL = "grantkeeper"
#: The notification kind API-key changes send (with an empty grant name): `change_probe` counts them.
_API_KEYS = "api_keys"
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
def _translate(sql: str) -> str:
    return sql.replace("?", "%s")


class _PgConn:
    """psycopg speaks ``%s``; the shared SQL is written with ``?``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = (), /) -> Any:
        return self._conn.execute(_translate(sql), params)


def _map_error(exc: Exception, where: str) -> GrantkeeperError:
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


class PostgresStore(SQLStore):
    """Open with `PostgresStore.open(url)`; the schema must exist (`grantkeeper migrate`)."""

    _row_lock = " FOR UPDATE OF grants"
    _shared_recovery = False  # each host keeps its own

    def __init__(self, url: str, crypto: Crypto, recovery: RecoveryDir, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        super().__init__(crypto, recovery, AdvisoryLiveness(functools.partial(_connect_liveness, url)))
        self.url = url
        self._where = safe_url(url)
        self._pool = pool
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._changed = threading.Condition()
        self._latest: dict[str, int] = {}  # grant -> newest generation announced by NOTIFY
        self._events: dict[str, int] = {}  # grant -> notifications seen (commits, releases, invalidations)
        self._key_changes = 0  # API-key changes announced by NOTIFY
        self._announce_keys = threading.local()  # set while this thread changes API keys (`_tx` announces it)
        self._closed = False

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = False, max_connections: int = 10, connect_timeout: float = 5.0
    ) -> PostgresStore:
        keys, source = load_ring(None, create=False)  # $GRANTKEEPER_KEY or $GRANTKEEPER_KEY_COMMAND
        crypto = Crypto(keys, source=source)
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout)), "options": _SESSION_OPTIONS},
        )
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise StoreUnavailable(f"cannot connect to {safe_url(url)}: {exc}") from None
        store = cls(url, crypto, RecoveryDir(_recovery_path(url), crypto), pool)
        try:
            store._check_schema(migrate=migrate)
        except BaseException:
            store.close()
            raise
        return store

    def _check_schema(self, *, migrate: bool) -> None:
        latest = latest_version("postgres")
        with self._tx() as conn:
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
                    raise StoreFormatError(f"{self._where} has a 'meta' table that grantkeeper did not write")
                version = int(bytes(row[0]).decode())
            elif present:
                raise StoreFormatError(
                    f"{self._where} already has tables named {sorted(present)} that grantkeeper did not create; "
                    "use a dedicated database (or a dedicated schema via search_path)"
                )
            if version > latest:
                raise StoreFormatError(
                    f"{self._where} has schema version {version}, newer than this grantkeeper understands "
                    f"({latest}); upgrade grantkeeper"
                )
            if version < latest:
                if not migrate:
                    hint = "is empty" if version == 0 else f"has schema version {version}"
                    raise StoreFormatError(
                        f"{self._where} {hint}; this grantkeeper needs schema version {latest}. Run "
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
                        (self._crypto.encrypt_bytes(KEY_CHECK, aad=KEY_CHECK_AAD),),
                    )
            unlock(conn, self._crypto, where=self._where)
            server_now = float(conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()[0])
        skew = time.time() - server_now
        if abs(skew) > _SKEW_WARNING:
            logger.warning(
                "grantkeeper: this host's clock is %.1f s %s the database server's; leases and expiry assume "
                "synchronized clocks (run NTP)", abs(skew), "ahead of" if skew > 0 else "behind",
            )  # fmt: skip

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
    def _tx(self, *, write: bool = True) -> Iterator[Conn]:
        if self._closed:
            raise ConfigurationError("this store is closed; open a new one")
        try:
            with self._pool.connection() as conn:
                if write:
                    with conn.transaction():
                        if getattr(self._announce_keys, "on", False):
                            self._notify(_PgConn(conn), "", 0, _API_KEYS)  # delivered at commit, never before
                        yield _PgConn(conn)
                else:
                    yield _PgConn(conn)  # autocommit: one statement, one round trip
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _map_error(exc, self._where) from None

    def _read(self, fn: Callable[[Conn], T]) -> T:
        """Reads are idempotent: one that fails on a connection the server dropped is retried on a fresh one."""
        try:
            return super()._read(fn)
        except StoreUnavailable:
            self._pool.check()  # replace every broken idle connection before trying again
            return super()._read(fn)

    # ---------------------------------------------------------------- notifications

    def _notify(self, conn: Conn, name: str, generation: int, kind: str) -> None:
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, json.dumps({"g": name, "n": generation, "k": kind})))

    def _ensure_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self.url, self._on_notify)
            return self._listener

    def _on_notify(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            name, generation, kind = str(note["g"]), int(note["n"]), str(note["k"])
        except (ValueError, KeyError, TypeError):
            logger.warning("grantkeeper: ignoring a malformed notification on channel %s", CHANNEL)
            return
        if kind == _API_KEYS:
            self._key_changes += 1  # only this thread writes it
            return
        with self._changed:
            self._latest[name] = max(generation, self._latest.get(name, -1))
            self._events[name] = self._events.get(name, 0) + 1
            self._changed.notify_all()
        for subscriber in list(self._subscribers):
            try:
                subscriber(name, generation, kind)
            except Exception:  # a subscriber's bug must not kill the listener
                logger.exception("grantkeeper: a store subscriber failed")

    def subscribe(self, subscriber: Callable[[str, int, str], None]) -> None:
        super().subscribe(subscriber)
        self._ensure_listener()

    # ---------------------------------------------------------------- API keys (`grantkeeper serve`)

    @contextlib.contextmanager
    def _announcing_keys(self) -> Iterator[None]:
        self._announce_keys.on = True
        try:
            yield
        finally:
            self._announce_keys.on = False

    def create_api_key(self, record: ApiKeyRecord, *, key: str) -> None:
        with self._announcing_keys():
            super().create_api_key(record, key=key)

    def revoke_api_key(self, name: str, *, now: float) -> ApiKeyRecord:
        with self._announcing_keys():
            return super().revoke_api_key(name, now=now)

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
            events = self._events.get(name, 0)
            while self._latest.get(name, -1) <= (generation if generation is not None else -1) and (
                self._events.get(name, 0) == events
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)


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
