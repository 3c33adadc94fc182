"""Per-key rate limits: a token bucket for each API key, in this process.

Each instance limits on its own (N instances behind a balancer allow N times the rate); the limit protects the
store and the providers from one runaway client, it is not a quota.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """`rate` requests per second per key on average, bursts of up to `burst`; `rate` <= 0 turns it off."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, max(1, burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of last update)
        self._lock = threading.Lock()

    def take(self, key: str) -> int | None:
        """None if `key` may go on; else the whole seconds to wait (for Retry-After)."""
        if self.rate <= 0:
            return None
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
