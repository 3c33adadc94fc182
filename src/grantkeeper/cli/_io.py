"""Small helpers every command group shares: the store a command works on, JSON output, secrets from stdin."""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO, TypeVar

import click

from grantkeeper._exceptions import ConfigurationError, GrantkeeperError, UnknownGrant, UnknownProvider
from grantkeeper._secrets import Secret
from grantkeeper.cli._session import Session
from grantkeeper.keepers import Keeper
from grantkeeper.tokens.token_input import looks_like_json

__all__ = [
    "DURATION",
    "ENV_NAME",
    "echo_json",
    "interactive",
    "json_option",
    "on_terminal",
    "open_keeper",
    "read_secret",
    "read_token_text",
    "store_url",
    "terminal_console",
]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def store_url(session: Session) -> str:
    return session.url()


@contextlib.contextmanager
def open_keeper(session: Session, *, create: bool = False) -> Iterator[Keeper]:
    """A keeper on the chosen store, closed at the end. Only commands that add providers create a store; others
    need one. A grant or provider name the store does not have is reported with the closest names it does."""
    with session.keeper(create=create) as keeper:
        try:
            yield keeper
        except UnknownGrant as exc:
            raise _with_suggestion(exc, exc.grant, keeper, "grants") from None
        except UnknownProvider as exc:
            raise _with_suggestion(exc, exc.provider, keeper, "providers") from None


_Unknown = TypeVar("_Unknown", UnknownGrant, UnknownProvider)
_Command = TypeVar("_Command", bound=Callable[..., object])


def _with_suggestion(exc: _Unknown, name: str | None, keeper: Keeper, kind: str) -> _Unknown:
    """`exc` with "did you mean ...?" added when the store has names close to `name` (difflib's ratio)."""
    try:
        known = keeper.store.names(kind)
    except GrantkeeperError:
        return exc  # the store failed meanwhile: the original error is the one to report
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6) if name else []
    if not close:
        return exc
    exc.message = f"{exc.message} (did you mean {' or '.join(repr(c) for c in close)}?)"
    exc.args = (exc.message,)
    return exc


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def json_option(help: str) -> Callable[[_Command], _Command]:
    """The ``--json`` flag of every command that can print JSON (parameter ``as_json``); `help` says what it prints."""
    return click.option("--json", "as_json", is_flag=True, help=help)


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


def _stdin(what: str, example: str) -> TextIO:
    stream = sys.stdin
    if stream is None:
        raise ConfigurationError(f"no standard input to read the {what} from; {example}")
    return stream


def _text(value: str, what: str, example: str) -> str:
    """`value` stripped; empty or not UTF-8 is an error naming `what`."""
    value = value.strip()
    if not value:
        raise ConfigurationError(f"the {what} on standard input is empty; {example}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes survive as surrogates until something encodes them
        raise ConfigurationError(f"the {what} on standard input is not UTF-8 text; {example}") from None
    return value


def read_secret(what: str, *, example: str) -> Secret:
    """One secret line from standard input (a hidden prompt on a terminal), stripped; empty is an error."""
    stream = _stdin(what, example)
    # One line only: a caller may keep the pipe open after writing it.
    try:
        value = click.prompt(what.capitalize(), hide_input=True, err=True) if stream.isatty() else stream.readline()
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} on standard input is not UTF-8 text; {example}") from None
    return Secret(_text(value, what, example))


#: A token response is a few KiB; reading stops here rather than holding an endless stream in memory.
_MAX_TOKEN_INPUT = 256 * 1024


def read_token_text(what: str, *, example: str) -> tuple[Secret, float]:
    """What `grant import` was given on standard input, and when it was issued (for a token response's relative
    lifetimes): a hidden one-line prompt on a terminal; else one line, or a whole JSON object when the first line
    starts one (a pretty-printed token response). A regular file is read whole, so a second token in it is seen
    and refused; it was issued when the file was last written. A pipe is read no further than needed: a caller
    may keep it open after writing."""
    stream = _stdin(what, example)
    now = time.time()
    try:
        if stream.isatty():
            return Secret(_text(click.prompt(what.capitalize(), hide_input=True, err=True), what, example)), now
        regular = _regular_file(stream)
        if regular is not None:
            return Secret(_text(stream.read(_MAX_TOKEN_INPUT), what, example)), min(now, regular)
        text = stream.readline(_MAX_TOKEN_INPUT)
        if looks_like_json(text):
            while not _complete_json(text) and len(text) < _MAX_TOKEN_INPUT:
                line = stream.readline(_MAX_TOKEN_INPUT - len(text))
                if not line:
                    break
                text += line
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} on standard input is not UTF-8 text; {example}") from None
    return Secret(_text(text, what, example)), now


def _regular_file(stream: TextIO) -> float | None:
    """The modification time of the file `stream` reads, if it is a regular file (``< token.json``)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # CliRunner's streams have no descriptor
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


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
