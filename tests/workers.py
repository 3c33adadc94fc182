"""Worker functions run in child processes (multiprocessing 'spawn' imports them from here)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
from tests.helpers import FAST_POLICY

#: With 1-second tokens the keeper guarantees at least 0.5 s of validity when it serves one (the skew is capped
#: at half the lifetime). A 401 for a check that itself took that long says the machine was overloaded, not
#: that an expired token was served; those are counted apart and do not fail the test.
LATE_CHECK = 0.5

#: check(keeper, http, grant, token, resource_url, served_at) -> the count to add for one use of a served token.
Check = Callable[[Keeper, httpx.Client, str, str, str, float], str]


def check_resource(keeper: Keeper, http: httpx.Client, grant: str, token: str, resource_url: str,
                   served: float) -> str:  # fmt: skip
    """Does the resource server accept the token (200)? A 401 is a failure unless the check came late."""
    status = http.get(resource_url, headers={"Authorization": f"Bearer {token}"}).status_code
    if status == 200:
        return "resource_ok"
    if time.monotonic() - served >= LATE_CHECK:
        return "resource_rejected_late"  # the check outlived the guaranteed validity
    return "resource_rejected"


def hammer(url: str, grants: list[str], seconds: float, threads: int, resource_url: str, queue: Any, *,
           check: Check = check_resource, policy: RefreshPolicy = FAST_POLICY, pause: float = 0.0) -> None:  # fmt: skip
    """Call access_token on `grants` from `threads` threads until the deadline; verify every token served
    at the resource server with `check`; report counts (never tokens) on `queue`."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    with Keeper.open(url, policy=policy) as keeper:

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
                    local[check(keeper, http, name, token, resource_url, time.monotonic())] += 1
                    if pause:
                        time.sleep(pause)
            with lock:
                counts.update(local)

        workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    queue.put(dict(counts))


#: Child processes start fresh interpreters (no forked locks or connections) and import their target from here.
SPAWN = multiprocessing.get_context("spawn")


def run_counting(processes: int, target: Callable[..., None], *args: Any, **options: Any) -> Counter[str]:
    """Run ``target(*args, queue, **options)`` in `processes` spawned processes, each of which puts one dict of
    counts on the queue; return their sum once every process has exited cleanly."""
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, queue), kwargs=options) for _ in range(processes)]
    for p in procs:
        p.start()
    totals: Counter[str] = Counter()
    for _ in procs:
        totals.update(queue.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return totals


def run_hammers(processes: int, *args: Any, **options: Any) -> Counter[str]:
    """`hammer` in `processes` spawned processes; the sum of their counts."""
    return run_counting(processes, hammer, *args, **options)
