"""The PostgreSQL store's asyncio face: `psycopg_pool.AsyncConnectionPool`, no worker threads.

The operations are `PostgresSQL`'s, the very generators the blocking `PostgresStore` runs (see
`grantkeeper.stores.transactions`); this module only runs them on asyncio connections and listens for NOTIFY on an
asyncio connection of its own. What it promises is `PostgresStore`'s (docs/postgres.md): the same statements, the
same transactions, the same liveness locks and recovery storage. Open with ``await AsyncPostgresStore.open(url)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import pq

from grantkeeper._exceptions import ConfigurationError, StoreUnavailable
from grantkeeper._secrets import Secret
from grantkeeper.engine.ports import AsyncStore
from grantkeeper.model.retention import HistoryRetention
from grantkeeper.stores.liveness import Liveness
from grantkeeper.stores.postgres import (
    CHANNEL,
    Announcements,
    PgConn,
    PostgresSQL,
    check_schema,
    map_error,
    open_crypto_and_recovery,
    pool_options,
    safe_url,
    tell_subscribers,
    translate,
)
from grantkeeper.stores.recovery import RecoveryDir
from grantkeeper.stores.sql import SQLStore, StoreObserver, Subscriber
from grantkeeper.stores.transactions import AsyncOperation, Blocking, Op, Sql

__all__ = ["AsyncPostgresStore"]

logger = logging.getLogger("grantkeeper")
T = TypeVar("T")


class _Fetched:
    """A statement's whole result, read off the asyncio cursor so the operation can take it without awaiting."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


class _AsyncListener:
    """LISTEN on an asyncio connection of its own, as a task: wakes waiters and tells subscribers."""

    def __init__(self, url: str, dispatch: Callable[[str], None]) -> None:
        self._url = url
        self._dispatch = dispatch
        self.connected = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="grantkeeper-listen")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=5)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    backoff = 0.1
                    async for note in conn.notifies():
                        self._dispatch(note.payload)
            except psycopg.Error as exc:
                if self.connected.is_set():
                    logger.warning("grantkeeper: lost the LISTEN connection (%s); polling until it is back", exc)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AsyncPostgresStore(AsyncStore):
    """`grantkeeper.engine.ports.AsyncStore` on PostgreSQL (see the module docstring)."""

    #: As `PostgresStore.pipelined`.
    pipelined = True

    def __init__(self, url: str, sql: PostgresSQL, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        self.url = url
        self._sql = sql
        self._where = safe_url(url)
        self._pool = pool
        self._listener: _AsyncListener | None = None
        self._announced = Announcements()
        self._changed = asyncio.Event()  # set and replaced on every notification
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool = False, max_connections: int = 10, connect_timeout: float = 5.0
    ) -> AsyncPostgresStore:
        crypto, recovery = await asyncio.to_thread(open_crypto_and_recovery, url)
        # The schema check runs once, on a blocking connection in a thread: it shares `check_schema` (and the key
        # check) with the blocking store instead of keeping an asyncio copy of it.
        await asyncio.to_thread(_check_schema, url, crypto, migrate=migrate, connect_timeout=connect_timeout)
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, timeout=connect_timeout,
            kwargs=pool_options(connect_timeout),
        )  # fmt: skip
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to {safe_url(url)}: {exc}") from None
        return cls(url, PostgresSQL(url, crypto, recovery), pool)

    # ---------------------------------------------------------------- plain attributes (no I/O)

    @property
    def retention(self) -> HistoryRetention:
        return self._sql.retention

    @retention.setter
    def retention(self, value: HistoryRetention) -> None:
        self._sql.retention = value

    @property
    def recovery(self) -> RecoveryDir:
        return self._sql.recovery

    @property
    def liveness(self) -> Liveness | None:
        return self._sql.liveness

    def fingerprint(self, token: Secret) -> str:
        return self._sql.fingerprint(token)

    def api_key_digest(self, key: str) -> str:
        return self._sql.api_key_digest(key)

    def observe(self, observer: StoreObserver) -> None:
        self._sql.observe(observer)

    def change_probe(self) -> Callable[[], object] | None:
        return None

    # ---------------------------------------------------------------- the operations (`SQLStore`'s, awaited)

    put_provider = AsyncOperation(SQLStore.put_provider)
    get_provider = AsyncOperation(SQLStore.get_provider)
    list_providers = AsyncOperation(SQLStore.list_providers)
    import_grant = AsyncOperation(SQLStore.import_grant)
    get_grant = AsyncOperation(SQLStore.get_grant)
    get_grant_and_provider = AsyncOperation(SQLStore.get_grant_and_provider)
    served_access = AsyncOperation(SQLStore.served_access)
    list_grants = AsyncOperation(SQLStore.list_grants)
    due_for_refresh = AsyncOperation(SQLStore.due_for_refresh)
    delete_grant = AsyncOperation(SQLStore.delete_grant)
    list_attempts = AsyncOperation(SQLStore.list_attempts)
    get_attempt = AsyncOperation(SQLStore.get_attempt)
    spent_by = AsyncOperation(SQLStore.spent_by)
    names = AsyncOperation(SQLStore.names)
    prune_history = AsyncOperation(SQLStore.prune_history)
    lease_holder = AsyncOperation(SQLStore.lease_holder)
    worker_alive = AsyncOperation(SQLStore.worker_alive)
    claim = AsyncOperation(SQLStore.claim)
    record_attempt = AsyncOperation(SQLStore.record_attempt)
    commit = AsyncOperation(SQLStore.commit)
    finish = AsyncOperation(SQLStore.finish)
    release = AsyncOperation(SQLStore.release)
    invalidate_access = AsyncOperation(SQLStore.invalidate_access)
    save_recovery = AsyncOperation(SQLStore.save_recovery)
    pending_recovery = AsyncOperation(SQLStore.pending_recovery)
    replay_recovery = AsyncOperation(SQLStore.replay_recovery)
    create_api_key = AsyncOperation(SQLStore.create_api_key)
    find_api_key = AsyncOperation(SQLStore.find_api_key)
    list_api_keys = AsyncOperation(SQLStore.list_api_keys)
    revoke_api_key = AsyncOperation(SQLStore.revoke_api_key)
    record_audit = AsyncOperation(SQLStore.record_audit)
    list_audit = AsyncOperation(SQLStore.list_audit)

    async def schema_version(self) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = await cursor.fetchone()
        assert row is not None  # check_schema saw it at open
        return int(bytes(row[0]).decode())

    # ---------------------------------------------------------------- running operations

    async def _aperform(self, fn: Callable[..., Op[T]], write: bool, /, *args: Any, **kwargs: Any) -> T:
        """Run the operation ``fn(sql, *args, **kwargs)`` on the pool; a read that fails on a connection the server
        dropped is run again on a fresh one (reads are idempotent)."""
        if self._listener is None and self._sql._subscribers:
            self._ensure_listener()  # subscribed where no event loop was running: listen from this loop on
        if write:
            return await self._run(fn(self._sql, *args, **kwargs), write=True)
        try:
            return await self._run(fn(self._sql, *args, **kwargs), write=False)
        except StoreUnavailable:
            await self._pool.check()
            return await self._run(fn(self._sql, *args, **kwargs), write=False)

    async def _run(self, op: Op[T], *, write: bool) -> T:
        """`grantkeeper.stores.transactions.perform`, awaited: a transaction from the first statement to `COMMIT`,
        a `Blocking` step or the end; in pipeline mode, so a statement marked ``wait=False`` travels with the next."""
        try:
            step = next(op)
            while True:
                if type(step) is Sql:
                    async with self._transaction(write) as run:
                        try:
                            while type(step) is Sql:
                                step = op.send(await run(step))
                        except StopIteration as stop:
                            return stop.value  # type: ignore[no-any-return]
                answer = await asyncio.to_thread(step.fn, *step.args) if isinstance(step, Blocking) else None
                step = op.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise ConfigurationError("this store is closed; open a new one")
        try:
            async with self._pool.connection() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    # Cut off mid-exchange (a cancelled task) or left in pipeline mode, the connection may hold a
                    # half-read result or an unsynced pipeline (where every later statement reads as no rows): it is
                    # closed, not handed out again. The server rolls back whatever was open; the pool replaces it.
                    if not isinstance(exc, Exception) or conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
                        await conn.close()
                    raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise map_error(exc, self._where) from None

    @contextlib.asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[Callable[[Sql], Any]]:
        """A transaction (`write`), or autocommit statements; yields the function that runs one statement."""
        async with self._connection() as conn:

            async def run_read(step: Sql) -> _Fetched:
                return await _fetched(await conn.execute(translate(step.text), step.params))

            if not write:
                yield run_read
                return
            if not self.pipelined:
                async with conn.transaction():
                    yield run_read
                return
            async with conn.pipeline() as pipeline:
                unread = conn.cursor()  # as `PgConn.run`: the statements whose results nobody reads share one

                async def run(step: Sql) -> _Fetched | None:
                    on = conn.cursor() if step.read else unread
                    cursor = await on.execute(translate(step.text), step.params)
                    if not step.wait:
                        return None
                    await pipeline.sync()  # this result is needed now: send everything queued, read the results
                    return await _fetched(cursor)

                # As `PostgresStore._tx`: BEGIN and COMMIT by hand, the COMMIT's answer read as the pipeline ends.
                await conn.execute("BEGIN")
                try:
                    yield run
                except Exception:  # a cancelled task's connection is closed instead (`_connection`)
                    with contextlib.suppress(psycopg.Error):
                        await pipeline.sync()  # out of the aborted state, if a statement failed
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")

    # ---------------------------------------------------------------- notifications

    def _ensure_listener(self) -> _AsyncListener:
        if self._listener is None:
            self._listener = _AsyncListener(self.url, self._on_notify)
        return self._listener

    def _on_notify(self, payload: str) -> None:
        note = self._announced.record(payload)
        self._changed.set()
        self._changed = asyncio.Event()
        if note is not None:
            tell_subscribers(self._sql._subscribers, note)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` (on the store's event loop) when another process commits or invalidates. The listener
        is a task of the running loop; subscribed where none runs (another thread), it starts with the next call."""
        self._sql.subscribe(subscriber)
        with contextlib.suppress(RuntimeError):  # no running event loop here
            self._ensure_listener()

    async def wait_for_change(self, name: str, *, poll: float, longest: float, generation: int | None = None) -> None:
        """`PostgresStore.wait_for_change`, awaited: wake on a NOTIFY for `name` past `generation`, or after
        `longest` (capped at 1 s); sleep `poll` while the listener is down."""
        listener = self._ensure_listener()
        if not listener.connected.is_set():
            await asyncio.sleep(poll)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(longest, 1.0)
        events = self._announced.events(name)
        while not self._announced.moved(name, generation, events):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            await self._listener.close()
        if self._sql.liveness is not None:
            await asyncio.to_thread(self._sql.liveness.close)
        await self._pool.close()


async def _fetched(cursor: psycopg.AsyncCursor[Any]) -> _Fetched:
    rows = await cursor.fetchall() if cursor.description is not None else []
    return _Fetched(rows, cursor.rowcount)


def _check_schema(url: str, crypto: Any, *, migrate: bool, connect_timeout: float) -> None:
    where = safe_url(url)
    try:
        with psycopg.connect(url, **pool_options(connect_timeout)) as conn, conn.transaction():
            check_schema(PgConn(conn), crypto, where, migrate=migrate)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise map_error(exc, where) from None
