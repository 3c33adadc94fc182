"""The parameters every command shares are declared once (`json_option`, `grant_argument`): they behave alike."""

from __future__ import annotations

from collections.abc import Iterator

import click

from grantkeeper.cli.completion import complete_grant
from grantkeeper.cli.main import cli


def _commands(command: click.Command, path: str = "grantkeeper") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _commands(sub, f"{path} {name}")


def test_every_json_flag_is_the_same_flag_with_its_own_help() -> None:
    flags = [(path, param) for path, command in _commands(cli) for param in command.params if "--json" in param.opts]
    assert len(flags) >= 17
    for path, param in flags:
        assert isinstance(param, click.Option), path
        assert (param.name, param.opts, param.is_flag, param.secondary_opts) == ("as_json", ["--json"], True, []), path
        assert param.help, path


def test_every_grant_name_argument_completes_grant_names() -> None:
    grant_commands = {"grant import", "grant revoke", "grant show", "grant remove", "refresh", "status", "token"}
    seen = set()
    for path, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Argument) and param.name == "name" and path.endswith(tuple(grant_commands)):
                assert param._custom_shell_complete is complete_grant, path
                seen.add(path.removeprefix("grantkeeper "))
    assert seen >= {"grant revoke", "grant remove", "grant show"}
