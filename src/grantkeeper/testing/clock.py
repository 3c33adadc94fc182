"""A clock tests can move: pass it to a Keeper to test expiry, keep-alive and lease timing without waiting."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """Wall time and monotonic time that only move when `advance` is called."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds
