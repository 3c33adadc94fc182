"""Help listings that read well to someone new: whole first sentences, and the root's commands in sections."""

from __future__ import annotations

from collections.abc import Sequence

import click

__all__ = ["HelpGroup"]

#: Long enough that a command's first sentence is wrapped rather than cut off with "...".
_SHORT_HELP_LIMIT = 150


class HelpGroup(click.Group):
    """A group whose listing shows each command's whole first sentence, in `sections` order when given.

    `sections` is ``(title, command names)`` pairs; commands in no section are listed last under "Commands".
    """

    sections: Sequence[tuple[str, Sequence[str]]] = ()

    def list_commands(self, ctx: click.Context) -> list[str]:
        ordered = [name for _, names in self.sections for name in names if name in self.commands]
        return ordered + sorted(set(self.commands) - set(ordered))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        shown = {
            name: cmd
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        }
        placed = [name for _, names in self.sections for name in names]
        groups = [(title, [n for n in names if n in shown]) for title, names in self.sections]
        groups.append(("Commands", [n for n in shown if n not in placed]))
        width = max(map(len, shown), default=0)  # one column width for all sections, so they line up
        for title, names in groups:
            if names:
                with formatter.section(title):
                    formatter.write_dl([(n.ljust(width), shown[n].get_short_help_str(_SHORT_HELP_LIMIT))
                                        for n in names])  # fmt: skip
