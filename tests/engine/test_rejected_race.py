"""A 401 reported while another caller is between reading the store and caching what it read (I4).

The reader finds the access token valid in the store; before it caches it, the resource server rejects that
token and `report_rejected` invalidates it. The reader must not then cache (and serve) the rejected token.
The interleaving is forced: the reader's store read returns only once the report has finished.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AsyncKeeper, Keeper
from grantkeeper.stores import SQLiteStore
from tests.helpers import FAST_POLICY, add_grant, resource_ok

Sim = Callable[..., Any]


def _hold_first_read(keeper: Keeper | AsyncKeeper) -> tuple[threading.Event, threading.Event]:
    """Make the first store read (the cold read, run in a worker thread by the async keeper) return only once
    `go` is set, after signalling `reached`: the caller has read the grant but cached nothing yet."""
    reached, go = threading.Event(), threading.Event()

    def hold(original: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not reached.is_set():
                reached.set()
                assert go.wait(30)
            return result

        return held

    for method in ("served_access", "get_grant_and_provider", "claim"):
        setattr(keeper.store, method, hold(getattr(keeper.store, method)))
    return reached, go


def test_a_token_rejected_while_a_cold_reader_caches_it_is_not_served(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim()
    db = tmp_path / "s.db"
    with Keeper(SQLiteStore.open(db), policy=FAST_POLICY) as first:
        add_grant(first, sim)
        rejected = first.access_token("g")  # generation 2: a valid access token now sits in the store
    cold = Keeper(SQLiteStore.open(db), policy=FAST_POLICY)
    reached, go = _hold_first_read(cold)
    served: list[str] = []
    reader = threading.Thread(target=lambda: served.append(cold.access_token("g")))
    reader.start()
    try:
        assert reached.wait(30)  # the reader has read the store and holds `rejected`, not yet cached
        assert cold.report_rejected("g", rejected)
    finally:
        go.set()
        reader.join(30)
    assert served and served[0] != rejected
    assert resource_ok(sim, served[0])
    assert cold.access_token("g") == served[0]
    cold.close()


@pytest.mark.anyio
async def test_the_same_race_on_the_async_keeper(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim()
    db = tmp_path / "s.db"
    with Keeper(SQLiteStore.open(db), policy=FAST_POLICY) as first:
        add_grant(first, sim)
        rejected = first.access_token("g")

    cold = AsyncKeeper(SQLiteStore.open(db), policy=FAST_POLICY)
    reached, go = _hold_first_read(cold)
    task = asyncio.create_task(cold.access_token("g"))
    assert await asyncio.to_thread(reached.wait, 30)
    try:
        assert await cold.report_rejected("g", rejected)
    finally:
        go.set()
    token = await task
    assert await cold.access_token("g") == token
    await cold.aclose()
    assert token != rejected
    assert resource_ok(sim, token)
