"""The keepers on their ports: `AsyncKeeper` awaits a native `AsyncStore` for every store call (no worker threads),
blocking work crosses back through `engine.threaded.blocking`, the background replay runs as a task, and the one
loop that runs a keeper's steps (`engine.ops`) feeds failures back into them on both faces."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AsyncKeeper, ClientAuthFailed, GrantEvent, Keeper
from grantkeeper._secrets import Secret
from grantkeeper.engine.ops import Call, Op, arun_steps, run_steps
from grantkeeper.engine.threaded import blocking
from grantkeeper.stores import SQLStore, open_store
from grantkeeper.testing import HttpError
from tests.helpers import FAST_POLICY, provider_for, resource_ok

Sim = Callable[..., object]


class LoopStore:
    """A natively async store: each method a coroutine that runs the SQL store's transaction on the event loop's own
    thread (no worker thread), and records the thread it ran on."""

    def __init__(self, store: SQLStore) -> None:
        self.sync = store
        self.retention = store.retention
        self.threads: list[tuple[str, str]] = []

    def fingerprint(self, token: Secret) -> str:
        return self.sync.fingerprint(token)

    def subscribe(self, subscriber: Callable[[str, int, str], None]) -> None:
        self.sync.subscribe(subscriber)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.sync, name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.threads.append((name, threading.current_thread().name))
            return method(*args, **kwargs)

        return call


def _async_keeper(store: LoopStore, **options: Any) -> AsyncKeeper:
    return AsyncKeeper(store, policy=FAST_POLICY, **options)  # type: ignore[arg-type]


def test_async_keeper_awaits_a_native_store_for_every_call(tmp_path: Path, make_sim: Sim) -> None:
    """Every store call of the async keeper (refresh, status, doctor, history, import, keepalive, invalidate, the
    event lookups) is awaited on the `AsyncStore` itself, on the loop's thread: none goes through a worker thread.
    The doctor's lazy lookups reach the store through `blocking`, and the event sink (user code) runs in a worker
    thread, not on the loop."""
    sim = make_sim()
    store = LoopStore(open_store(f"sqlite://{tmp_path}/grants.db"))
    sink_threads: list[str] = []

    def sink(event: GrantEvent) -> None:
        sink_threads.append(threading.current_thread().name)

    async def main() -> tuple[str, str]:
        keeper = _async_keeper(store, on_event=sink)
        loop_thread = threading.current_thread().name
        await keeper.add_provider(provider_for(sim))  # type: ignore[arg-type]
        await keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
        token = await keeper.access_token("g")
        status = await keeper.status("g")
        assert status.generation == 2 and status.pending_recovery == 0
        assert [a.generation for a in await keeper.history("g")] == [1]
        diagnosis = await keeper.doctor("g")
        assert diagnosis.grant == "g"
        assert [g.name for g in await keeper.grants()] == ["g"]
        assert await keeper.report_rejected("g", token)
        assert (await keeper.keepalive(margin=0.0)) == []
        sim.inject(HttpError(401, error="invalid_client"))  # type: ignore[attr-defined]
        with pytest.raises(ClientAuthFailed):
            await keeper.refresh("g", force=True)
        await keeper.aclose()
        return token, loop_thread

    token, loop_thread = asyncio.run(main())
    assert resource_ok(sim, token)
    called = {name for name, _ in store.threads}
    assert {"claim", "commit", "get_grant_and_provider", "lease_holder", "list_attempts", "pending_recovery",
            "import_grant", "spent_by", "invalidate_access", "get_grant", "close"} <= called  # fmt: skip
    assert {thread for _, thread in store.threads} == {loop_thread}
    assert len(sink_threads) == 1 and sink_threads[0] != loop_thread


def test_blocking_runs_a_native_store_on_its_loop_from_a_worker_thread(tmp_path: Path, make_sim: Sim) -> None:
    """`blocking(store, loop)` gives code in a worker thread a synchronous store whose calls run on the loop."""
    sim = make_sim()
    store = LoopStore(open_store(f"sqlite://{tmp_path}/grants.db"))
    with Keeper(store.sync) as keeper:
        keeper.add_provider(provider_for(sim))  # type: ignore[arg-type]
        keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]

        async def main() -> tuple[int, str]:
            loop = asyncio.get_running_loop()
            face = blocking(store, loop)  # type: ignore[arg-type]
            generation = await asyncio.to_thread(lambda: face.get_grant("g").generation)
            return generation, threading.current_thread().name

        generation, loop_thread = asyncio.run(main())
    assert generation == 1
    assert store.threads == [("get_grant", loop_thread)]


def test_async_keeper_replays_recovery_in_the_background(tmp_path: Path, make_sim: Sim) -> None:
    """A successor the store refused waits in recovery storage; the async keeper's background replay (a task on
    its loop) commits it while the keeper stays open, with no further refresh asked for."""
    sim = make_sim()
    url = f"sqlite://{tmp_path}/grants.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(provider_for(sim))  # type: ignore[arg-type]
        keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    store = LoopStore(open_store(url))
    commit = store.sync.commit

    def refuse_once(*_: object, **__: object) -> object:
        store.sync.commit = commit  # type: ignore[method-assign]
        raise RuntimeError("a bug in the commit")

    store.sync.commit = refuse_once  # type: ignore[method-assign]

    async def main() -> int:
        keeper = _async_keeper(store)
        try:
            assert resource_ok(sim, await keeper.access_token("g"))
            for _ in range(500):  # the replay backs off from 0.1 s; the bound only stops a broken test
                if (await store.get_grant("g")).generation == 2:
                    break
                await asyncio.sleep(0.02)
            assert (await store.list_attempts("g", limit=1))[0].state.value == "recovered"
            return (await store.get_grant("g")).generation
        finally:
            await keeper.aclose()

    assert asyncio.run(main()) == 2
    assert ("replay_recovery", "MainThread") in store.threads
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


def _steps(log: list[str]) -> Generator[Op, Any, str]:
    try:
        yield Call.of("explode")
    except KeyError as exc:
        log.append(f"caught {exc.args[0]}")
    try:
        value = yield Call.of("echo", 7)
        return f"got {value}"
    finally:
        log.append("closed")


def _execute(op: Op) -> Any:
    assert isinstance(op, Call)
    if op.method == "explode":
        raise KeyError("boom")
    return op.args[0]


def test_both_loops_throw_failures_into_the_steps() -> None:
    """An operation's exception goes back into the steps, which may handle it; results come back as replies."""
    log: list[str] = []
    assert run_steps(_steps(log), _execute) == "got 7"

    async def execute(op: Op) -> Any:
        return _execute(op)

    assert asyncio.run(arun_steps(_steps(log), execute)) == "got 7"
    assert log == ["caught boom", "closed"] * 2


def test_an_unhandled_failure_closes_the_steps() -> None:
    log: list[str] = []

    def steps() -> Generator[Op, Any, None]:
        try:
            yield Call.of("explode")
        finally:
            log.append("closed")

    with pytest.raises(KeyError):
        run_steps(steps(), _execute)
    assert log == ["closed"]
