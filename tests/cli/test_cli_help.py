"""Help that reads well to someone new, and options that are the same everywhere.

The root help groups the commands and ends with a typical session; no listing cuts a description off with
"..."; every command that prints data has --json; every command is documented in docs/cli.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from grantkeeper.cli.main import cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
#: Commands whose output is data a script may want, not a confirmation line.
PRINTS_DATA = {
    "status", "refresh", "keepalive", "doctor", "history", "demo", "import", "grant list", "grant show",
    "provider list", "provider profiles", "keys list",
}  # fmt: skip


def _commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} ")


ALL = dict(_commands())


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_root_help_groups_commands_and_shows_a_typical_session() -> None:
    """Sections in the order a newcomer needs them, each top-level command exactly once, then a typical
    session (provider, consent, token, keepalive) and the exit statuses."""
    text = _help()
    sections = [m.group(1) for m in re.finditer(r"^(\S[^:\n]*):$", text, re.MULTILINE)]
    assert sections == ["Options", "Set up", "Use", "Diagnose", "Move and maintain"]
    listed = re.findall(r"^  ([a-z]+)\s{2,}\S", text.split("Set up:")[1].split("Typical use:")[0], re.MULTILINE)
    top_level = [name for name in ALL if " " not in name]
    assert sorted(listed) == sorted(top_level) and len(listed) == len(set(listed))
    assert listed[:3] == ["provider", "connect", "grant"]
    typical = text.split("Typical use:")[1]
    for step in ("provider add", "connect", "token", "keepalive"):
        assert f"grantkeeper {step}" in typical
    assert "Exit status" in typical


@pytest.mark.parametrize("group", ["", "grant", "provider", "keys"])
def test_listings_show_whole_sentences(group: str) -> None:
    """No command description in a listing is cut off with "..."."""
    listing = _help(*group.split()).split("Options:")[1].split("Typical use:")[0]
    assert "..." not in listing


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_command_has_help(path: str) -> None:
    """Every command's --help works and says something beyond its usage line."""
    text = _help(*path.split())
    assert text.startswith("Usage: ")
    assert len(text.split("\n\n")[1].strip()) > 20


@pytest.mark.parametrize("path", sorted(PRINTS_DATA))
def test_commands_that_print_data_take_json(path: str) -> None:
    """--json is the one spelling for machine-readable output."""
    options = {opt for p in ALL[path].params for opt in getattr(p, "opts", [])}
    assert "--json" in options


def test_every_command_is_in_the_docs() -> None:
    """docs/cli.md has a heading for every command."""
    headings = "\n".join(line for line in DOCS.read_text().splitlines() if line.startswith("### "))
    for path, command in ALL.items():
        if not isinstance(command, click.Group):
            assert f"`{path}" in headings, f"docs/cli.md has no heading for {path}"
