"""``grantkeeper completion``: the shell completion script, and what grant and provider names complete to.

Completion is Click's own (the shell calls ``grantkeeper`` with ``_GRANTKEEPER_COMPLETE`` set). Names come
from the store's SQLite file, opened read-only with plain `sqlite3`, not through `open_store`: listing names
needs no key, and loading the key may run ``$GRANTKEEPER_KEY_COMMAND``, which could prompt or be slow on
every Tab press. Completion never creates a store, never prompts, and prints nothing but candidates: any
failure yields no candidates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

import click
from click.shell_completion import CompletionItem, get_completion_class

__all__ = ["COMPLETE_VAR", "complete_grant", "complete_provider", "completion", "grant_argument"]

COMPLETE_VAR = "_GRANTKEEPER_COMPLETE"
_SHELLS = ("bash", "zsh", "fish")
_Command = TypeVar("_Command", bound=Callable[..., object])


def _store_url(ctx: click.Context) -> str:
    root = ctx.find_root()
    url = root.params.get("store_url")
    if url is None:
        from grantkeeper.stores import default_store_url

        url = default_store_url()
    return str(url)


def _names(ctx: click.Context, table: str) -> list[str]:
    """Names in the store's `table` ("grants" or "providers"); [] if there is no SQLite store to read."""
    try:
        from grantkeeper.stores import is_postgres, store_path

        url = _store_url(ctx)
        if is_postgres(url):
            return []  # a server store needs its key and a network round trip: too slow for a Tab press
        path = store_path(url)
        if path is None or not path.is_file():
            return []
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = conn.execute(f"SELECT name FROM {table} ORDER BY name").fetchall()
        finally:
            conn.close()
        return [str(r[0]) for r in rows]
    except Exception:
        return []


def complete_grant(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Grant names in the store that start with `incomplete`."""
    return [CompletionItem(n) for n in _names(ctx, "grants") if n.startswith(incomplete)]


def complete_provider(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Provider names in the store that start with `incomplete`."""
    return [CompletionItem(n) for n in _names(ctx, "providers") if n.startswith(incomplete)]


def grant_argument(*, required: bool = True) -> Callable[[_Command], _Command]:
    """The NAME argument of every command about one grant (parameter ``name``), completing to the store's grants."""
    return click.argument("name", required=required, shell_complete=complete_grant)


@click.command()
@click.argument("shell", type=click.Choice(_SHELLS), metavar="SHELL")
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    Commands, options, grant names and provider names then complete with Tab. Install it once, e.g.

    \b
      bash: grantkeeper completion bash > ~/.local/share/bash-completion/completions/grantkeeper
      zsh:  grantkeeper completion zsh > "${fpath[1]}/_grantkeeper"
      fish: grantkeeper completion fish > ~/.config/fish/completions/grantkeeper.fish

    or load it in the current shell: eval "$(grantkeeper completion bash)".
    """
    cls = get_completion_class(shell)
    if cls is None:  # Click ships all three; a Click without one is a broken install
        raise click.UsageError(f"this Click has no {shell} completion")
    root = ctx.find_root().command
    click.echo(cls(root, {}, "grantkeeper", COMPLETE_VAR).source())
