"""The audit trail: which key got which grant's token (or refreshed, reported, proxied), when, and what it got.

Entries hold names, statuses and fingerprints only. They are buffered in memory and written in one transaction
every `flush_every` seconds (and at shutdown), so a burst of token requests costs the store one write, not one
each; a process killed outright loses at most that last interval. Retention follows the attempt history's
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
    def __init__(self, store: SQLStore, *, flush_every: float = 0.5, keep_at_most: int = 100_000) -> None:
        self._store = store
        self.flush_every = flush_every
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

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self._store.record_audit, batch)
        except GrantkeeperError as exc:
            self._pending[:0] = batch  # kept for the next flush
            logger.warning("audit trail: %d entries not written yet: %s", len(batch), exc.message)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="grantkeeper-audit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
