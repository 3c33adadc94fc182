"""One progress bar for every CLI operation over many grants or values, on stderr and only for a person.

The library reports progress as ``progress(done, total)`` callbacks (`Keeper.keepalive`, `export_bundle`,
`import_bundle`, `rotate`); `progress_bar` turns them into a transient Rich bar. stdout stays the command's
result, so a bar never mixes into output a script reads, and nothing at all is drawn when stderr is not a
terminal or the command prints JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from grantkeeper.cli._io import terminal_console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["ProgressCallback", "progress_bar"]

ProgressCallback = Callable[[int, int], None]


@contextmanager
def progress_bar(label: str, *, enabled: bool = True, minimum: int = 2) -> Iterator[ProgressCallback]:
    """A ``progress(done, total)`` callback that draws a bar labelled `label` on stderr while the block runs.

    The bar appears at the first call whose total is at least `minimum` (one item is not worth a bar) and is
    erased when the block ends, so the command's own summary lines follow a clean terminal. With `enabled`
    false (``--json``) or stderr not a terminal, the callback does nothing.
    """
    console = terminal_console(stderr=True) if enabled else None
    if console is None:
        yield _ignore
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    shown: list[tuple[Progress, TaskID]] = []
    with ExitStack() as stack:

        def update(done: int, total: int) -> None:
            if not shown:
                if total < minimum:
                    return
                # stdout is not captured: it may be a pipe while stderr is the terminal, and a result line
                # printed during the run must stay on stdout rather than be drawn above the bar.
                bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                               console=console, transient=True, redirect_stdout=False)  # fmt: skip
                stack.enter_context(bar)
                shown.append((bar, bar.add_task(label, total=total)))
            bar, task = shown[0]
            bar.update(task, completed=done, total=total)

        yield update


def _ignore(done: int, total: int) -> None:
    """The callback when no bar is drawn."""
