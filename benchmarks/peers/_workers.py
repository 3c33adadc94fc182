"""Functions run in child processes ("spawn" and "forkserver" import them from here).

They report counts and error codes, never tokens.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from typing import Any

from benchmarks.peers import library
from benchmarks.peers.base import Client, SimInfo, held_name

__all__ = ["DICT", "contend", "dict_of_tokens", "hold_grants", "refresh_forever"]

#: The memory baseline's name: a plain dict of name -> (access token, expiry).
DICT = "dict"


def contend(
    lib: str, location: str, sim: SimInfo, names: list[str], seconds: float, threads: int, think: float,
    ready: Any, go: Any, results: Any,
) -> None:  # fmt: skip
    """One process of the contention scenario: `threads` threads, each calling ``client.token(name)`` for a
    random grant, then `think` seconds of "other work", until `seconds` after the parent says go.

    A grant the library reports dead (it needs re-consent) is dropped by this process, as an application
    would stop using it, so a lost grant is not hammered for the rest of the run.
    """
    counts: Counter[str] = Counter()
    dead: set[str] = set()
    lock = threading.Lock()
    readied = False
    try:
        client = library(lib).client(location, sim)
        ready.put("ready")
        readied = True
        if not go.wait(timeout=300):
            raise RuntimeError("the parent never started the run")
        deadline = time.monotonic() + seconds

        def loop(seed: int) -> None:
            rng = random.Random(seed)
            local: Counter[str] = Counter()
            while time.monotonic() < deadline:
                name = rng.choice(names)
                if name not in dead:
                    _one_call(client, name, local, dead)
                time.sleep(think)
            with lock:
                counts.update(local)

        workers = [threading.Thread(target=loop, args=(secrets.randbits(32),)) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        client.close()
    except BaseException as exc:
        if not readied:
            ready.put(f"failed: {type(exc).__name__}: {exc}")
        results.put({"counts": dict(counts), "dead": len(dead), "error": f"{type(exc).__name__}: {exc}"})
        raise
    results.put({"counts": dict(counts), "dead": len(dead), "error": None})


def _one_call(client: Client, name: str, counts: Counter[str], dead: set[str]) -> None:
    try:
        client.token(name)
    except Exception as exc:
        code = client.diagnose(exc)
        counts[f"error:{code}"] += 1
        if client.is_dead(code):
            dead.add(name)
        return
    counts["calls"] += 1


def refresh_forever(lib: str, location: str, sim: SimInfo, name: str, policy: dict[str, float], conn: Any) -> None:
    """One worker of the crash scenario: open the library, refresh `name` once (connections open, caches
    warm: the kill should land in steady-state refreshing, not in one library's slower first refresh), say
    ready, then refresh (forced, persisted) in a loop until the parent SIGKILLs it. A refresh that fails ends
    the loop and is reported."""
    try:
        client = library(lib, grantkeeper_policy=policy).client(location, sim)
        client.refresh(name)
        conn.send("ready")
        while True:
            client.refresh(name)
    except Exception as exc:
        conn.send(f"failed: {type(exc).__name__}")
        raise


def hold_grants(lib: str, location: str, count: int, conn: Any) -> None:
    """The memory scenario: hold `count` grants' access tokens the way the library holds them, then report the
    process's resident set size before (imports done) and its peak after, in KiB."""
    held = library(lib) if lib != DICT else None  # imports done before the first reading
    before = _status_kib("VmRSS")
    holder = held.hold(location, count) if held is not None else dict_of_tokens(count)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a spawned child would report its parent's peak.
    peak = _status_kib("VmHWM")
    conn.send({"before_kib": before, "peak_kib": peak, "held": len(holder)})


def dict_of_tokens(count: int) -> dict[str, tuple[str, float]]:
    expires = time.time() + 3600
    return {held_name(i): (secrets.token_urlsafe(32), expires) for i in range(count)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
