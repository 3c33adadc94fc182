"""Functions run in child processes ("spawn" imports them from here, so they live in an importable module)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

from grantkeeper import GrantkeeperError, Keeper


def hold_token(url: str, grant: str, seconds: float, threads: int, ready: Any, go: Any, results: Any) -> None:
    """One process, one Keeper, `threads` threads calling `access_token(grant)` in a loop for `seconds`.

    Reports counts on `results` (never tokens): calls served, errors by code, and short digests of the
    distinct access tokens served (so the parent can count them across processes).
    The clock starts when the parent sets `go`, after every process has opened its keeper.
    """
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    readied = False
    lock = threading.Lock()
    try:
        with Keeper.open(url) as keeper:
            ready.put("ready")
            readied = True
            if not go.wait(timeout=300):
                raise RuntimeError("the parent never started the run")
            deadline = time.monotonic() + seconds

            def loop() -> None:
                local: Counter[str] = Counter()
                tokens: set[str] = set()
                while time.monotonic() < deadline:
                    try:
                        token = keeper.access_token(grant)
                    except GrantkeeperError as exc:
                        local[f"error:{exc.code}"] += 1
                        continue
                    local["calls"] += 1
                    tokens.add(hashlib.blake2b(token.encode(), digest_size=8).hexdigest())
                with lock:
                    counts.update(local)
                    seen.update(tokens)

            workers = [threading.Thread(target=loop) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
    except BaseException as exc:
        counts[f"crash:{type(exc).__name__}"] += 1
        if not readied:
            ready.put(f"failed: {type(exc).__name__}")
        results.put({"counts": dict(counts), "tokens": [], "error": f"{type(exc).__name__}: {exc}"})
        raise
    results.put({"counts": dict(counts), "tokens": sorted(seen), "error": None})
