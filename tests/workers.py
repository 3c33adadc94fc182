"""Worker functions run in child processes (multiprocessing 'spawn' imports them from here)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx

from grantkeeper import GrantkeeperError, Keeper
from tests.helpers import FAST_POLICY


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
                    status = http.get(resource_url, headers={"Authorization": f"Bearer {token}"}).status_code
                    local["resource_ok" if status == 200 else "resource_rejected"] += 1
            with lock:
                counts.update(local)

        workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    queue.put(dict(counts))
