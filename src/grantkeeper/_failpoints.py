"""Named failpoints: inert unless a test turns them on.

Crash tests set ``GRANTKEEPER_FAILPOINTS="after_send=kill"`` in a child process's environment; the child
SIGKILLs itself when it reaches that point of the refresh transaction. In-process tests can register a
callable with `set_hook`. When nothing is configured, `hit()` is one dict lookup.

Points (in transaction order): ``after_claim`` (lease and attempt durable, nothing sent), ``before_send``,
``after_send`` (provider answered, nothing committed), ``before_commit``, ``after_commit`` (committed,
lease not yet released by this worker), ``after_recovery_save``; and outside the refresh,
``private_file_written`` (a key file, bundle or new SQLite store fully written under its temporary name, not
yet in place).

Actions: ``kill`` (SIGKILL), ``sleep:SECONDS``, and ``wait:PATH`` (block until the file PATH exists, so a test
can hold a process at a point until the other processes it races have done their part).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

__all__ = ["POINTS", "clear_hooks", "hit", "set_hook"]

POINTS = frozenset(
    {"after_claim", "before_send", "after_send", "before_commit", "after_commit", "after_recovery_save",
     "private_file_written"}
)  # fmt: skip

_hooks: dict[str, Callable[[], None]] = {}


def _parse(spec: str) -> dict[str, str]:
    actions: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if name not in POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
        actions[name] = action or "kill"
    return actions


_env_actions = _parse(os.environ.get("GRANTKEEPER_FAILPOINTS", ""))


def set_hook(name: str, hook: Callable[[], None]) -> None:
    """Run `hook` whenever the refresh transaction reaches `name` (tests only)."""
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}")
    _hooks[name] = hook


def clear_hooks() -> None:
    _hooks.clear()


def hit(name: str) -> None:
    if not _hooks and not _env_actions:
        return
    hook = _hooks.get(name)
    if hook is not None:
        hook()
    action = _env_actions.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action is not None and action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
    elif action is not None and action.startswith("wait:"):
        path = action.removeprefix("wait:")
        while not os.path.exists(path):
            time.sleep(0.02)
