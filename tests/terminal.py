"""Run the installed ``grantkeeper`` console script the way a person or a script does: on a pseudo-terminal
(pexpect), or with pipes and no terminal at all.

Both take the same fixed environment (`environment`): the store and key from the caller, a colour-capable
``TERM``, and none of the variables that force or forbid colour, so what a test sees depends only on whether
there is a terminal. The console script (not ``python -m``) is what a person types, so it is what runs here.
"""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import pexpect

__all__ = [
    "COLOUR",
    "ESC",
    "ESCAPE",
    "GRANTKEEPER",
    "TIMEOUT",
    "Screen",
    "Terminal",
    "commands",
    "environment",
    "no_escape",
    "on_terminal",
    "run_with_stdout_redirected",
    "run_without_terminal",
    "spawn",
    "terminal_env",
]

#: The console script installed next to the interpreter running the tests (the venv's ``bin``).
GRANTKEEPER = Path(sys.executable).with_name("grantkeeper")
#: Seconds to wait for any one expected output or for the program to end: a loaded 2-core CI machine runs
#: the DOT server, the CLI and pytest at once, so this is generous; a passing run never waits this long.
TIMEOUT = 120
DIMENSIONS = (40, 160)
ESC = "\x1b"

#: Any escape sequence: colours (SGR), cursor movement, erasing.
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A colour (not bold or dim): foreground or background, 8/16, 256 or true colour.
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-79]|4[0-79]|9[0-7]|10[0-7]|38;[25]|48;[25])[0-9;]*m")

# Each of these would decide colour or terminal behaviour for Click or Rich regardless of the real terminal.
_COLOUR_VARIABLES = (
    "FORCE_COLOR", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
    "COLUMNS", "LINES", "COLORTERM",
)  # fmt: skip


def terminal_env(**changes: str | None) -> dict[str, str]:
    """The environment of a person's colour terminal (none of the variables that force or forbid colour), with
    `changes` applied (None removes a variable); the store comes from the caller's $GRANTKEEPER_STORE."""
    env = {k: v for k, v in os.environ.items() if k not in _COLOUR_VARIABLES}
    env["TERM"] = "xterm-256color"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Screen:
    """What a command showed on the terminal, and its exit status."""

    status: int
    text: str  # everything written to the terminal, escape codes included

    @property
    def plain(self) -> str:
        return ESCAPE.sub("", self.text)


def on_terminal(*args: str, env: dict[str, str] | None = None, stdout: Path | None = None) -> Screen:
    """``python -m grantkeeper ARGS`` run to its end with stdin, stdout and stderr on a pseudo-terminal of
    `DIMENSIONS`; nothing is typed. With `stdout`, standard output goes to that file instead, so the terminal
    shows only stderr."""
    command = [sys.executable, "-m", "grantkeeper", *args]
    if stdout is not None:
        command = ["/bin/sh", "-c", 'out="$1"; shift; exec "$@" > "$out"', "sh", str(stdout), *command]
    child = pexpect.spawn(command[0], command[1:], env=env if env is not None else terminal_env(),
                          dimensions=DIMENSIONS, encoding="utf-8", codec_errors="replace",
                          timeout=TIMEOUT)  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    status = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)
    return Screen(status, str(child.before))


def environment(store_url: str, *, key: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every run gets: the test's store (and $GRANTKEEPER_KEY when given; otherwise the store's
    key file beside it is used), ``TERM=xterm-256color``, no colour overrides, no other grantkeeper settings."""
    env = {k: v for k, v in terminal_env().items() if not k.startswith("GRANTKEEPER_")}
    env["GRANTKEEPER_STORE"] = store_url
    if key is not None:
        env["GRANTKEEPER_KEY"] = key
    env.update(extra or {})
    return env


class Terminal:
    """One ``grantkeeper`` process on a pseudo-terminal and everything the terminal has shown so far."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self._screen = io.StringIO()
        child.logfile_read = self._screen

    @property
    def transcript(self) -> str:
        """Everything the program wrote to the terminal, including the terminal's echo of typed input."""
        return self._screen.getvalue()

    def expect(self, text: str) -> str:
        """Wait for `text` (literally) and return what the terminal showed before it."""
        try:
            self.child.expect_exact(text)
        except (pexpect.EOF, pexpect.TIMEOUT) as exc:
            raise AssertionError(f"waiting for {text!r} ({type(exc).__name__}); the terminal showed:\n"
                                 f"{self.transcript}") from None  # fmt: skip
        before: str = self.child.before
        return before

    def type_hidden(self, prompt: str, text: str) -> None:
        """Answer a hidden prompt: wait for it, then for the terminal's echo to be off, then type `text`.

        Click writes the prompt text before getpass turns echo off, so typing on sight of the prompt could race
        the switch and show the secret for a reason that is not the program's fault.
        """
        self.expect(prompt)
        if not self.child.waitnoecho(timeout=TIMEOUT):
            raise AssertionError(f"echo stayed on after {prompt!r}; the terminal showed:\n{self.transcript}")
        self.child.sendline(text)

    def answer(self, prompt: str, text: str) -> None:
        """Answer a visible prompt (a confirmation) once it is shown; the terminal echoes the answer."""
        self.expect(prompt)
        self.child.sendline(text)

    def finish(self) -> int:
        """Wait for the program to end; its exit status (128 + N for a signal N, as a shell reports it)."""
        self.expect_end()
        self.child.close()
        if self.child.signalstatus is not None:
            return 128 + int(self.child.signalstatus)
        status: int = self.child.exitstatus
        return status

    def expect_end(self) -> None:
        try:
            self.child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            raise AssertionError(f"the program did not end; the terminal showed:\n{self.transcript}") from None

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


def spawn(*args: str, env: Mapping[str, str], cwd: Path | None = None) -> Terminal:
    """Start ``grantkeeper ARGS`` on a new 40x160 pseudo-terminal (stdin, stdout and stderr all on it)."""
    assert GRANTKEEPER.exists(), f"no console script at {GRANTKEEPER}: install the package (pip install -e .)"
    child = pexpect.spawn(
        str(GRANTKEEPER), list(args), env=dict(env), cwd=str(cwd) if cwd else None, dimensions=DIMENSIONS,
        timeout=TIMEOUT, encoding="utf-8", codec_errors="replace",
    )  # fmt: skip
    return Terminal(child)


def run_without_terminal(
    *args: str, env: Mapping[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``grantkeeper ARGS`` with stdout and stderr as pipes and stdin from `stdin` through a pipe (None: from
    /dev/null), in a new session so that no controlling terminal is reachable either (getpass would otherwise
    open /dev/tty). A program that waits for input it cannot get fails the test through the timeout."""
    assert GRANTKEEPER.exists(), f"no console script at {GRANTKEEPER}: install the package (pip install -e .)"
    return subprocess.run(
        [str(GRANTKEEPER), *args], input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=TIMEOUT, check=False,
        start_new_session=True,
    )  # fmt: skip


def run_with_stdout_redirected(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """``grantkeeper ARGS > file`` typed at a terminal: stdin and stderr on a pseudo-terminal, stdout a pipe.
    Returns the exit status, stdout, and what the terminal showed (stderr).

    The case where colour leaks into files: a program that asks "is there a person?" of stdin or stderr
    instead of the stream it is writing to.
    """
    assert GRANTKEEPER.exists(), f"no console script at {GRANTKEEPER}: install the package (pip install -e .)"
    master, slave = pty.openpty()
    screen = bytearray()

    def drain() -> None:  # a full pty buffer would block the program's stderr writes
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=drain, name="pty-drain", daemon=True)
    try:
        process = subprocess.Popen([str(GRANTKEEPER), *args], stdin=slave, stdout=subprocess.PIPE, stderr=slave,
                                   env=dict(env), start_new_session=True)  # fmt: skip
        os.close(slave)
        slave = -1
        reader.start()
        try:
            stdout, _ = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return process.returncode, stdout.decode(errors="replace"), screen.decode(errors="replace")


def no_escape(*outputs: str | bytes) -> None:
    """Assert that no output holds an escape character (colour, cursor movement, hyperlinks all start so)."""
    for output in outputs:
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        assert ESC not in text, f"escape code in output: {text!r}"


def commands(group: click.Command, prefix: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Every command path of a Click group, the group itself first (e.g. (), ('grant',), ('grant', 'list'))."""
    paths = [tuple(prefix)]
    if isinstance(group, click.Group):
        for name, command in sorted(group.commands.items()):
            paths += commands(command, (*prefix, name))
    return paths
