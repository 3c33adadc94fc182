"""One worker process of ``grantkeeper demo`` (an importable module, as the "spawn" start method needs).

The process opens ONE `Keeper` shared by its threads. Each thread loops until the deadline: get an access token
from the keeper, present it to the simulator's ``/resource``, count the answer. The parent hears counts only,
through the queue; a token never leaves this process.

Messages put on the queue (all plain data):

* ``("ready", index, None)`` once the keeper is open;
* ``("progress", index, counts)`` about twice a second while running;
* ``("done", index, counts)`` once, at the end (also after a failure, with the failure counted in ``errors``).

What is slowness and what is an error is decided here, where the exception is seen: a resource check that timed
out or lost its connection, and a keeper error that says "retry later" (`TransientError`: the provider did not
answer in time, another worker held the lease too long, the store was busy) are counted in ``slow``; anything
else in ``errors``. The parent decides which errors break an invariant.

grantkeeper's own log records (DEBUG and up) go to the worker's log file, which the parent scans for tokens.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from grantkeeper._exceptions import GrantkeeperError, TransientError
from grantkeeper.keepers import Keeper
from grantkeeper.model.retention import HistoryRetention
from grantkeeper.protocol.policy import RefreshPolicy

__all__ = ["Counts", "WorkerPlan", "run"]

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
    #: slowness by kind: resource checks that timed out or lost their connection, keeper calls that ended in a
    #: `TransientError` (its code). Reported, never a failure by itself.
    slow: dict[str, int] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def slowness(self, kind: str) -> None:
        self.slow[kind] = self.slow.get(kind, 0) + 1

    def add(self, other: Counts) -> None:
        self.token_calls += other.token_calls
        self.resource_ok += other.resource_ok
        self.resource_rejected += other.resource_rejected
        self.resource_late += other.resource_late
        for code, n in list(other.errors.items()):
            self.errors[code] = self.errors.get(code, 0) + n
        for kind, n in list(other.slow.items()):
            self.slow[kind] = self.slow.get(kind, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "token_calls": self.token_calls,
            "resource_ok": self.resource_ok,
            "resource_rejected": self.resource_rejected,
            "resource_late": self.resource_late,
            "errors": dict(self.errors),
            "slow": dict(self.slow),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(
            data["token_calls"], data["resource_ok"], data["resource_rejected"], dict(data["errors"]),
            resource_late=data["resource_late"], slow=dict(data["slow"]),
        )  # fmt: skip


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process needs (plain, picklable data: the "spawn" start method sends it)."""

    store_url: str
    resource_url: str
    grant: str
    threads: int
    seconds: float
    access_ttl: float
    #: the demo's HTTP client timeout for one resource check
    resource_timeout: float
    #: the keeper's budget for one token request (`RefreshPolicy.request_timeout`)
    request_timeout: float
    #: the folder for the workers' log files (``worker-<index>.log``)
    log_dir: str
    verbose: bool = False

    def policy(self) -> RefreshPolicy:
        """The keepers' refresh policy: the default, with `request_timeout` and the lease it requires."""
        return RefreshPolicy(request_timeout=self.request_timeout, lease_ttl=max(30.0, 2 * self.request_timeout + 1))

    def finish_within(self) -> float:
        """How long after the deadline a thread can still be in its last loop turn while every bound holds: a
        wait for another worker's refresh, then a refresh of its own (one re-send after an ambiguous answer), then
        a resource check. A worker later than this is stuck, which no bound allows."""
        policy = self.policy()
        return policy.wait_timeout + 2 * policy.request_timeout + policy.deadline + self.resource_timeout + 10.0

    @staticmethod
    def retention() -> HistoryRetention:
        """Keep every attempt of the run: the verdict reads them all."""
        return HistoryRetention(days=1.0, per_grant=10**9)


def _merged(parts: list[Counts]) -> Counts:
    total = Counts()
    for part in parts:
        total.add(part)
    return total


def _loop(keeper: Keeper, http: httpx.Client, plan: WorkerPlan, deadline: float, counts: Counts) -> None:
    """One thread: token, resource check, count; until the deadline."""
    late_after = plan.access_ttl / 2
    while time.monotonic() < deadline:
        counts.token_calls += 1
        try:
            token = keeper.access_token(plan.grant)
        except TransientError as exc:  # the provider, the lease holder or the store was too slow: retry later
            counts.slowness(exc.code)
            time.sleep(ERROR_PAUSE)
            continue
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
            response = http.get(plan.resource_url, headers={"Authorization": f"Bearer {token}"})
        except httpx.TimeoutException:
            counts.slowness("resource_timeout")
            continue
        except httpx.TransportError:  # the check never got an answer: nothing is known about the token
            counts.slowness("resource_unreachable")
            time.sleep(ERROR_PAUSE)
            continue
        if response.status_code == 200:
            counts.resource_ok += 1
        elif response.status_code == 401 and time.monotonic() - checked >= late_after:
            counts.resource_late += 1
        elif response.status_code == 401:
            counts.resource_rejected += 1
            try:
                keeper.report_rejected(plan.grant, token)  # what an application does on a 401 (I4)
            except GrantkeeperError as exc:
                counts.error(exc.code)
        else:
            counts.error(f"resource_http_{response.status_code}")


def _configure_logging(log_path: str, verbose: bool) -> None:
    """Every grantkeeper record to the log file (the parent scans it for tokens), INFO and up to stderr with -v."""
    logger = logging.getLogger("grantkeeper")
    logger.setLevel(logging.DEBUG)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(formatter)
    logger.addHandler(to_file)
    if verbose:
        to_stderr = logging.StreamHandler(sys.stderr)
        to_stderr.setFormatter(formatter)
        to_stderr.setLevel(logging.INFO)
        logger.addHandler(to_stderr)


def run(index: int, plan: WorkerPlan, queue: _Queue, go: _Event) -> None:
    """Process entry point: see the module docstring."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    parts = [Counts() for _ in range(plan.threads)]
    try:
        _configure_logging(os.path.join(plan.log_dir, f"worker-{index}.log"), plan.verbose)
        with (
            Keeper.open(plan.store_url, create=False, policy=plan.policy(), retention=plan.retention()) as keeper,
            httpx.Client(timeout=plan.resource_timeout, trust_env=False) as http,
        ):
            queue.put(("ready", index, None))
            if not go.wait(START_TIMEOUT):
                parts[0].error("never_started")
                return
            deadline = time.monotonic() + plan.seconds
            workers = [
                threading.Thread(
                    target=_loop, args=(keeper, http, plan, deadline, part), name=f"demo-{index}-{n}", daemon=True
                )
                for n, part in enumerate(parts)
            ]
            for worker in workers:
                worker.start()
            while alive := [worker for worker in workers if worker.is_alive()]:
                alive[0].join(PROGRESS_EVERY)
                queue.put(("progress", index, _merged(parts).as_dict()))
    except TransientError as exc:  # e.g. the store stayed busy past its timeout while opening
        parts[0].slowness(exc.code)
    except GrantkeeperError as exc:
        parts[0].error(exc.code)
    except Exception as exc:
        parts[0].error(f"unexpected_{type(exc).__name__}")
    finally:
        queue.put(("done", index, _merged(parts).as_dict()))
