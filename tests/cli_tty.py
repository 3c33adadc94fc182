"""Running the real ``grantkeeper`` on a pseudo-terminal (pexpect), as a person at a terminal would see it."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pexpect

#: Any escape sequence: colours (SGR), cursor movement, erasing.
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A colour (not bold or dim): foreground or background, 8/16, 256 or true colour.
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-79]|4[0-79]|9[0-7]|10[0-7]|38;[25]|48;[25])[0-9;]*m")
_COLOUR_VARIABLES = ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS",
                     "LINES")  # fmt: skip
#: Generous: a loaded 2-core machine may take a few seconds to start Python and Rich.
TIMEOUT = 120


@dataclass
class Screen:
    """What a command showed on the terminal, and its exit status."""

    status: int
    text: str  # everything written to the terminal, escape codes included

    @property
    def plain(self) -> str:
        return ESCAPE.sub("", self.text)


def terminal_env(**changes: str | None) -> dict[str, str]:
    """The environment of a person's colour terminal: none of the variables that force or forbid colour."""
    env = {k: v for k, v in os.environ.items() if k not in _COLOUR_VARIABLES}
    env["TERM"] = "xterm-256color"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def on_terminal(*args: str, env: dict[str, str] | None = None, stdout: Path | None = None) -> Screen:
    """``python -m grantkeeper ARGS`` with stdin, stdout and stderr on a 40x160 pseudo-terminal.

    With `stdout`, standard output goes to that file instead, so the terminal shows only stderr.
    """
    command = [sys.executable, "-m", "grantkeeper", *args]
    if stdout is not None:
        command = ["/bin/sh", "-c", 'out="$1"; shift; exec "$@" > "$out"', "sh", str(stdout), *command]
    child = pexpect.spawn(command[0], command[1:], env=env if env is not None else terminal_env(),
                          dimensions=(40, 160), encoding="utf-8", codec_errors="replace",
                          timeout=TIMEOUT)  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    status = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)
    return Screen(status, str(child.before))
