"""The child process of test_group_commit_crash: refresh grants concurrently through group commit, as the scheduler
does, until a failpoint from $GRANTKEEPER_FAILPOINTS kills it (or to the end: the recovering scheduler).

    python -m tests.engine.group_commit_child STORE_URL STAGGER force|plain|force-refused GRANT...

The i-th grant's refresh starts STAGGER * i seconds after the first (0: all at once, their claims in one batch);
``force`` refreshes every grant, ``plain`` only those whose access token is not usable; ``force-refused`` is
``force`` on a store that refuses the writes from the moment the first refresh is about to commit (the batch's
commit fails: each successor goes to recovery storage): SQLite locked by another connection, PostgreSQL refusing
every change of a grant row (a trigger) for as long as this process lives. The worker id is the
child's own (a second child is another worker). Every batch the store commits is printed as one JSON line (the
store calls it held, in order) once it is durable, so the test knows which transactions went through before a
kill. A run that is not killed ends with a line of each grant's outcome: its generation, or the error code and
the attempt the error names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import psycopg

from grantkeeper import GrantkeeperError, RefreshPolicy
from grantkeeper import _failpoints as failpoints
from grantkeeper._clock import SystemClock
from grantkeeper.engine.drivers import drive_async
from grantkeeper.engine.group_commit import GroupCommit
from grantkeeper.engine.threaded import threaded
from grantkeeper.protocol import refresh_flow
from grantkeeper.stores import SQLiteStore, is_postgres, open_store, store_path
from grantkeeper.stores.sql import SQLStore
from grantkeeper.tokens.sender import AsyncHttpSender
from grantkeeper.tokens.transport import async_client
from tests.helpers import store_locked_at

#: A lease far longer than the recovery's wait (30 s): a killed child's leases must be taken over from its liveness
#: signal, which the batch's claims hold as a single claim's would; waiting out the TTL fails the test. A recovering
#: child knows the killed one is gone (no deferral of its re-sends on PostgreSQL).
POLICY = RefreshPolicy(lease_ttl=120.0, request_timeout=5.0, wait_timeout=30.0, deadline=10.0, adopt_after=0.0)

Outcome = dict[str, Any]


def _reported(store: SQLStore, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
    results = store.perform_batch(calls)
    print(json.dumps({"batch": [method for method, _, _ in calls]}), flush=True)
    return results


async def _refresh_all(store: SQLStore, stagger: float, force: bool, names: list[str]) -> dict[str, Outcome]:
    grouped = GroupCommit(threaded(store), lambda calls: asyncio.to_thread(_reported, store, calls))
    worker = f"scheduler:{os.getpid()}"
    async with async_client() as http:
        sender = AsyncHttpSender(http)

        async def refresh(index: int, name: str) -> Outcome:
            await asyncio.sleep(stagger * index)
            flow = refresh_flow(name, worker=worker, force=force, policy=POLICY)
            try:
                refreshed = await drive_async(flow, store=grouped, sender=sender, clock=SystemClock())
            except GrantkeeperError as exc:
                return {"error": exc.code, "attempt_id": exc.attempt_id}
            return {"generation": refreshed.grant.generation}

        outcomes = await asyncio.gather(*(refresh(i, name) for i, name in enumerate(names)))
    return dict(zip(names, outcomes, strict=True))


#: A trigger that refuses every change of a grant row while some session holds the advisory lock (4242, 1), which
#: the child takes when it starts refusing and holds until it dies.
_REFUSE = """
CREATE OR REPLACE FUNCTION gk_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 4242 AND objid = 1 AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) THEN
        RAISE EXCEPTION 'this test store refuses writes to grants while the process that asked for it lives';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER gk_test_refuse BEFORE UPDATE ON grants FOR EACH ROW EXECUTE FUNCTION gk_test_refuse();
"""


@contextlib.contextmanager
def _grants_refused_from_commit(url: str) -> Iterator[None]:
    """Inside the block, and until this process dies, the PostgreSQL store refuses every commit of a refresh from
    the first time one is about to commit (a trigger raises; claims still go through)."""
    held: list[psycopg.Connection[Any]] = []

    def refuse() -> None:
        failpoints.clear_hooks()
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("SELECT pg_advisory_lock(4242, 1)")
        conn.execute(_REFUSE)
        held.append(conn)

    failpoints.set_hook("before_commit", refuse)
    try:
        yield
    finally:
        failpoints.clear_hooks()
        for conn in held:
            conn.close()


def _opened(url: str, mode: str) -> tuple[SQLStore, contextlib.AbstractContextManager[None]]:
    """The store, and what makes it refuse commits in ``force-refused`` mode."""
    if mode != "force-refused":
        return open_store(url), contextlib.nullcontext()
    if is_postgres(url):
        return open_store(url), _grants_refused_from_commit(url)
    db = store_path(url)
    assert db is not None
    # Short busy timeout: the locked store refuses the batch's commit at once instead of after the default 5 s.
    return SQLiteStore.open(db, busy_timeout=0.2), store_locked_at(db)


def main(argv: list[str]) -> None:
    url, stagger, mode, names = argv[0], float(argv[1]), argv[2], argv[3:]
    store, refusing = _opened(url, mode)
    try:
        with refusing:
            outcomes = asyncio.run(_refresh_all(store, stagger, mode != "plain", names))
    finally:
        store.close()
    print(json.dumps({"outcomes": outcomes}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
