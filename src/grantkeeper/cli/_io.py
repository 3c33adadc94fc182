"""Small helpers every command group shares: the store a command works on, JSON output, secrets from stdin."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TYPE_CHECKING, TextIO

import click

from grantkeeper._exceptions import ConfigurationError
from grantkeeper._secrets import Secret
from grantkeeper.cli._session import Session
from grantkeeper.engine import Keeper

__all__ = [
    "DURATION",
    "ENV_NAME",
    "echo_json",
    "interactive",
    "on_terminal",
    "open_keeper",
    "read_secret",
    "store_url",
    "terminal_console",
]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def store_url(session: Session) -> str:
    return session.url()


def open_keeper(session: Session, *, create: bool = False) -> Keeper:
    """A keeper on the chosen store. Only commands that add providers create a store; others need one."""
    return session.keeper(create=create)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def interactive() -> bool:
    """Whether a person may be asked: standard input is a terminal. Never prompt when this is False."""
    stream = sys.stdin
    return stream is not None and stream.isatty()


def on_terminal(*, stderr: bool = False) -> bool:
    """Whether stdout (or stderr) is a terminal a person watches: see `terminal_console`."""
    stream: TextIO | None = sys.stderr if stderr else sys.stdout  # the streams at call time (CliRunner swaps them)
    return stream is not None and stream.isatty() and os.environ.get("TERM", "") != "dumb"


def terminal_console(*, stderr: bool = False) -> Console | None:
    """A Rich console on stdout (or stderr) when a person is watching it, else None: print plain text then.

    A terminal is a stream that is a TTY whose $TERM is not ``dumb`` (no cursor movement, often no box
    drawing). Colour is off when $NO_COLOR is set and not empty (https://no-color.org). The decision is made
    here rather than by Rich so that $FORCE_COLOR or $TTY_COMPATIBLE can never put escape codes into a pipe
    that scripts parse.
    """
    if not on_terminal(stderr=stderr):
        return None
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(file=stream, force_terminal=True, no_color=no_color, color_system=None if no_color else "auto",
                   highlight=False, emoji=False, markup=False)  # fmt: skip


def read_secret(what: str, *, example: str) -> Secret:
    """One secret line from standard input (a hidden prompt on a terminal), stripped; empty is an error."""
    stream = sys.stdin
    if stream is None:
        raise ConfigurationError(f"no standard input to read the {what} from; {example}")
    # One line only: a caller may keep the pipe open after writing it.
    try:
        value = click.prompt(what.capitalize(), hide_input=True, err=True) if stream.isatty() else stream.readline()
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} on standard input is not UTF-8 text; {example}") from None
    value = value.strip()
    if not value:
        raise ConfigurationError(f"the {what} on standard input is empty; {example}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes survive as surrogates until something encodes them
        raise ConfigurationError(f"the {what} on standard input is not UTF-8 text; {example}") from None
    return Secret(value)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


if TYPE_CHECKING:
    from rich.console import Console

    _FloatParam = click.ParamType[float]
else:  # click < 8.2 has no generic ParamType at run time
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """A length of time: seconds, or a number with a unit (``90s``, ``30m``, ``12h``, ``7d``, ``2w``)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        scale = _UNITS.get(text[-1:]) if text else None
        number = text[:-1] if scale is not None else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 12h, 7d or 2w", param, ctx)
        if not 0 <= seconds < float("inf"):
            self.fail(f"{value!r} must be a non-negative duration", param, ctx)
        return seconds


DURATION = Duration()
