"""Time, injected: the only place that reads the clocks.

Wall time (UTC epoch seconds) is what gets persisted (expiry, lease expiry, attempt times) because other
processes and hosts compare against it; `monotonic()` drives local waits and deadlines.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """UTC wall time in epoch seconds."""

    def monotonic(self) -> float:
        """A clock that never goes back, for local deadlines."""


class SystemClock:
    """The real clocks. The methods are the C functions themselves: the cached-token fast path calls one."""

    __slots__ = ()
    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)
