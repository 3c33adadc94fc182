"""`AuditTrail` writes its entries in short batches: when `flush_at` entries wait, without waiting for the
`flush_every` timer (one long write made the requests arriving during it wait); a store that refuses is asked
again after `flush_every`, not in a tight loop; stopping writes everything that waits."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from grantkeeper import Keeper, Provider
from grantkeeper.serve.audit import AuditTrail
from grantkeeper.stores import SQLStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> SQLStore:
    url = f"sqlite:///{tmp_path}/audit.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"))
        keeper.import_grant("g", provider="p", refresh_token="refresh-token-value-0123456789")
    opened = open_store(url)
    assert isinstance(opened, SQLStore)
    yield opened  # type: ignore[misc]
    opened.close()


def _written(store: SQLStore) -> int:
    return len(store.list_audit(grant="g", limit=1000))


def test_a_full_batch_is_written_without_waiting_for_the_timer(store: SQLStore) -> None:
    async def scenario() -> tuple[int, int]:
        trail = AuditTrail(store, flush_every=60.0, flush_at=10)
        trail.start()
        try:
            for _ in range(9):
                trail.add("app", "token", "g", 200, fingerprint="fp", generation=1)
            await asyncio.sleep(0.3)
            before = await asyncio.to_thread(_written, store)
            trail.add("app", "token", "g", 200, fingerprint="fp", generation=1)  # the tenth
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(_written, store) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return before, await asyncio.to_thread(_written, store)
        finally:
            await trail.stop()

    assert asyncio.run(scenario()) == (0, 10)


def test_stop_writes_what_waits(store: SQLStore) -> None:
    async def scenario() -> None:
        trail = AuditTrail(store, flush_every=60.0, flush_at=1000)
        trail.start()
        for _ in range(5):
            trail.add("app", "proxy", "g", 200, detail="GET api.example")
        await trail.stop()

    asyncio.run(scenario())
    assert _written(store) == 5


def test_a_refusing_store_is_asked_again_after_the_interval_not_at_once(
    store: SQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> int:
        trail = AuditTrail(store, flush_every=0.2, flush_at=1)
        trail.start()
        await asyncio.to_thread(store.close)  # every write is refused from now on
        for _ in range(50):
            trail.add("app", "token", "g", 200)
            await asyncio.sleep(0.01)
        trail._task.cancel()  # type: ignore[union-attr]  # not stop(): its last flush would warn once more
        return len(trail._pending)

    with caplog.at_level(logging.WARNING, logger="grantkeeper"):
        started = time.monotonic()
        waiting = asyncio.run(scenario())
        elapsed = time.monotonic() - started
    warnings = [r for r in caplog.records if "audit trail" in r.getMessage()]
    assert waiting == 50  # nothing lost while the store refuses
    assert 1 <= len(warnings) <= elapsed / 0.2 + 2  # one try per interval, not one per entry


def test_stop_returns_whenever_it_comes_while_entries_flow(store: SQLStore) -> None:
    """SIGTERM may come at any point of the flusher's wait, including just as a full batch wakes it."""

    async def scenario() -> int:
        stopped = 0
        for round_ in range(60):
            trail = AuditTrail(store, flush_every=0.005, flush_at=2)
            trail.start()
            for i in range(round_ % 7):
                trail.add("app", "token", "g", 200)
                if i % 3 == 0:
                    await asyncio.sleep(0)
            await trail.stop()
            stopped += 1
        return stopped

    # In a thread of its own: a stop that never returns fails the test instead of hanging it.
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(120)
    assert result == [60], "AuditTrail.stop() did not return"
