"""The audit trail: which key got which grant's token (or refreshed, reported, proxied), when, and what it got.

Entries hold names, statuses and fingerprints only. They are buffered in memory and written in one transaction
(in a worker thread) every `flush_every` seconds, or as soon as `flush_at` entries wait, and at shutdown: a burst
of token requests costs the store one write per batch, not one per request. The size bound keeps each write
short: writing costs ~8 us of CPU per entry, much of it Python holding the GIL, and every request arriving while
a 1,000-entry batch (0.5 s at 2,000 requests/s) was written waited ~8-10 ms more, which made the token route's
p99. A graceful stop (SIGTERM) writes everything; a process killed outright (SIGKILL) loses the entries not yet
written: those of the last `flush_every` seconds, at most about `flush_at` plus what arrived during the write in
progress, and a batch whose write had not committed. Retention follows the attempt history's
(`HistoryRetention`: days, and entries per grant), applied as entries are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.stores import SQLStore
from grantkeeper.stores.access import AuditEntry

__all__ = ["AuditTrail"]

logger = logging.getLogger("grantkeeper")


class AuditTrail:
    def __init__(self, store: SQLStore, *, flush_every: float = 0.5, flush_at: int = 200,
                 keep_at_most: int = 100_000) -> None:  # fmt: skip
        self._store = store
        self.flush_every, self.flush_at = flush_every, flush_at
        self._due = asyncio.Event()  # set when `flush_at` entries wait
        self._keep_at_most = keep_at_most
        self._pending: list[AuditEntry] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, api_key: str, action: str, grant: str | None, status: int, *, fingerprint: str | None = None,
            generation: int | None = None, detail: str | None = None) -> None:  # fmt: skip
        if len(self._pending) >= self._keep_at_most:  # the store has been down long: keep memory bounded
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(AuditEntry(time.time(), api_key, action, grant, status, fingerprint, generation, detail))
        if len(self._pending) >= self.flush_at:
            self._due.set()

    async def flush(self) -> bool:
        """Write the waiting entries; False if the store refused them (they wait for the next flush)."""
        batch, self._pending = self._pending, []
        if not batch:
            return True
        try:
            await asyncio.to_thread(self._store.record_audit, batch)
        except GrantkeeperError as exc:
            self._pending[:0] = batch  # kept for the next flush
            logger.warning("audit trail: %d entries not written yet: %s", len(batch), exc.message)
            return False
        return True

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: wait_for runs the wait as a task of its own, and a cancellation (stop)
            # arriving as a full batch woke that task could leave this one cancelling forever (Python 3.11).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_every):
                    await self._due.wait()
            self._due.clear()
            if not await self.flush():
                await asyncio.sleep(self.flush_every)  # a store that refused is asked again later, not at once

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="grantkeeper-audit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
