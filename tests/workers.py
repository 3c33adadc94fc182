"""Worker functions run in child processes (multiprocessing 'spawn' imports them from here)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx

from grantkeeper import GrantkeeperError, Keeper
from tests.helpers import FAST_POLICY

#: With 1-second tokens the keeper guarantees at least 0.5 s of validity when it serves one (the skew is capped
#: at half the lifetime). A 401 for a check that itself took that long says the machine was overloaded, not
#: that an expired token was served; those are counted apart and do not fail the test.
LATE_CHECK = 0.5


def hammer(url: str, grants: list[str], seconds: float, threads: int, resource_url: str, queue: Any) -> None:
    """Call access_token on `grants` from `threads` threads until the deadline; verify every token served
    at the resource server; report counts (never tokens) on `queue`."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    with Keeper.open(url, policy=FAST_POLICY) as keeper:

        def loop(index: int) -> None:
            local: Counter[str] = Counter()
            with httpx.Client() as http:
                i = index
                while time.monotonic() < deadline:
                    name = grants[i % len(grants)]
                    i += 1
                    try:
                        token = keeper.access_token(name)
                    except GrantkeeperError as exc:
                        local[f"error:{exc.code}"] += 1
                        continue
                    local["calls"] += 1
                    checked = time.monotonic()
                    status = http.get(resource_url, headers={"Authorization": f"Bearer {token}"}).status_code
                    if status == 200:
                        local["resource_ok"] += 1
                    elif time.monotonic() - checked >= LATE_CHECK:
                        local["resource_rejected_late"] += 1  # the check outlived the guaranteed validity
                    else:
                        local["resource_rejected"] += 1
            with lock:
                counts.update(local)

        workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    queue.put(dict(counts))
