"""One worker process of ``grantkeeper demo`` (an importable module, as the "spawn" start method needs).

The process opens ONE `Keeper` shared by its threads. Each thread loops until the deadline: get an access token
from the keeper, present it to the simulator's ``/resource``, count the answer. The parent hears counts only,
through the queue; a token never leaves this process.

Messages put on the queue (all plain data):

* ``("ready", index, None)`` once the keeper is open;
* ``("progress", index, counts)`` about twice a second while running;
* ``("done", index, counts)`` once, at the end (also after a failure, with the failure counted in ``errors``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.engine import Keeper

__all__ = ["Counts", "run"]

START_TIMEOUT = 120.0  # how long a ready worker waits for the parent's "go"
PROGRESS_EVERY = 0.5
ERROR_PAUSE = 0.05  # after a failed call, so a dead grant does not turn into a busy loop


class _Queue(Protocol):
    def put(self, obj: Any) -> None: ...


class _Event(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass
class Counts:
    """What one thread (or, merged, one process) saw. Only numbers and error codes."""

    token_calls: int = 0
    resource_ok: int = 0
    resource_rejected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: 401s for checks that took longer than the validity the keeper guarantees at serving time (half the
    #: token's lifetime): the machine was too slow to use the token, not a keeper bug. Reported, not failed.
    resource_late: int = 0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def add(self, other: Counts) -> None:
        self.token_calls += other.token_calls
        self.resource_ok += other.resource_ok
        self.resource_rejected += other.resource_rejected
        self.resource_late += other.resource_late
        for code, n in list(other.errors.items()):
            self.errors[code] = self.errors.get(code, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "token_calls": self.token_calls,
            "resource_ok": self.resource_ok,
            "resource_rejected": self.resource_rejected,
            "resource_late": self.resource_late,
            "errors": dict(self.errors),
        }


def _merged(parts: list[Counts]) -> Counts:
    total = Counts()
    for part in parts:
        total.add(part)
    return total


def _loop(
    keeper: Keeper,
    http: httpx.Client,
    resource_url: str,
    grant: str,
    deadline: float,
    counts: Counts,
    late_after: float,
) -> None:
    """One thread: token, resource check, count; until the deadline."""
    while time.monotonic() < deadline:
        counts.token_calls += 1
        try:
            token = keeper.access_token(grant)
        except GrantkeeperError as exc:
            counts.error(exc.code)
            time.sleep(ERROR_PAUSE)
            continue
        except Exception as exc:
            counts.error(f"unexpected_{type(exc).__name__}")
            time.sleep(ERROR_PAUSE)
            continue
        checked = time.monotonic()
        try:
            response = http.get(resource_url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            counts.error("resource_unreachable")
            time.sleep(ERROR_PAUSE)
            continue
        if response.status_code == 200:
            counts.resource_ok += 1
        elif response.status_code == 401 and time.monotonic() - checked >= late_after:
            counts.resource_late += 1
        elif response.status_code == 401:
            counts.resource_rejected += 1
            try:
                keeper.report_rejected(grant, token)  # what an application does on a 401 (I4)
            except GrantkeeperError as exc:
                counts.error(exc.code)
        else:
            counts.error(f"resource_http_{response.status_code}")


def _configure_logging(verbose: bool) -> None:
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
        logger = logging.getLogger("grantkeeper")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run(
    index: int,
    store_url: str,
    base_url: str,
    grant: str,
    threads: int,
    seconds: float,
    queue: _Queue,
    go: _Event,
    verbose: bool = False,
    access_ttl: float = 1.0,
) -> None:
    """Process entry point: see the module docstring."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    _configure_logging(verbose)
    parts = [Counts() for _ in range(threads)]
    try:
        with Keeper.open(store_url, create=False) as keeper, httpx.Client(timeout=5.0, trust_env=False) as http:
            queue.put(("ready", index, None))
            if not go.wait(START_TIMEOUT):
                parts[0].error("never_started")
                return
            deadline = time.monotonic() + seconds
            workers = [
                threading.Thread(
                    target=_loop,
                    args=(keeper, http, base_url + "/resource", grant, deadline, part, access_ttl / 2),
                    name=f"demo-{index}-{n}",
                    daemon=True,
                )
                for n, part in enumerate(parts)
            ]
            for worker in workers:
                worker.start()
            while alive := [worker for worker in workers if worker.is_alive()]:
                alive[0].join(PROGRESS_EVERY)
                queue.put(("progress", index, _merged(parts).as_dict()))
    except GrantkeeperError as exc:
        parts[0].error(exc.code)
    except Exception as exc:
        parts[0].error(f"unexpected_{type(exc).__name__}")
    finally:
        queue.put(("done", index, _merged(parts).as_dict()))
