"""Ctrl-C at a prompt is an interruption like Ctrl-C anywhere else: exit 130 and 'grantkeeper: interrupted';
Ctrl-D at a prompt cancels it the same way. Click's prompts raise ``Abort() from None`` for both, so the error
boundary must look at the exception's context, not its cause (before, both were exit 1 "Aborted!", which
docs/cli.md reserves for unexpected errors)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.terminal import Terminal, environment, spawn

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py


def _at_the_prompt(
    ready: CliWorld, args: list[str], prompt: str, press: Callable[[Terminal], object]
) -> tuple[int, str]:
    """Run the command on a terminal, wait for `prompt`, `press` a key instead of answering; exit status and
    screen."""
    terminal: Terminal = spawn(*args, env=environment(ready.url))
    try:
        terminal.expect(prompt)
        press(terminal)
        return terminal.finish(), terminal.transcript
    finally:
        terminal.close()


@pytest.mark.parametrize(
    ("args", "prompt"),
    [
        (("grant", "import", "new", "--provider", "sim"), "Refresh token: "),
        (("provider", "add", "sim", "--client-secret-stdin"), "Client secret: "),
        (("export", "{tmp}/out.bundle", "--passphrase-stdin"), "Bundle passphrase: "),
        (("import", "{tmp}/in.bundle", "--passphrase-stdin"), "Bundle passphrase: "),
        (("grant", "remove", GRANT), "from this store? [y/N]: "),
    ],
    ids=["grant-import", "provider-add", "export", "import", "grant-remove"],
)
def test_ctrl_c_at_a_prompt_is_an_interruption(
    ready: CliWorld, tmp_path: Path, args: tuple[str, ...], prompt: str
) -> None:
    """The person presses Ctrl-C instead of answering: exit 130 with the one 'interrupted' line (as during
    connect's wait), not exit 1 'Aborted!' (an unexpected error by the documented table), and nothing changes."""
    bundle = tmp_path / "in.bundle"
    assert ready.run("export", str(bundle), "--passphrase-stdin", stdin="a passphrase for the bundle\n").code == 0
    before = ready.run("grant", "list", "--json").stdout
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    status, transcript = _at_the_prompt(ready, filled, prompt, lambda terminal: terminal.child.send("\x03"))
    assert status == 130, transcript
    assert "grantkeeper: interrupted" in transcript and "Aborted!" not in transcript
    assert json.loads(ready.run("grant", "list", "--json").stdout) == json.loads(before)
    assert not (tmp_path / "out.bundle").exists()


@pytest.mark.parametrize(
    ("args", "prompt"),
    [
        (("grant", "import", "new", "--provider", "sim"), "Refresh token: "),
        (("grant", "remove", GRANT), "from this store? [y/N]: "),
    ],
    ids=["grant-import", "grant-remove"],
)
def test_ctrl_d_at_a_prompt_cancels(ready: CliWorld, args: tuple[str, ...], prompt: str) -> None:
    """End of input (Ctrl-D) instead of an answer: exit 130 with one line saying the prompt was cancelled, and
    nothing changes."""
    before = ready.run("grant", "list", "--json").stdout
    status, transcript = _at_the_prompt(ready, list(args), prompt, lambda terminal: terminal.child.sendeof())
    assert status == 130, transcript
    assert "grantkeeper: cancelled" in transcript and "Aborted!" not in transcript
    assert json.loads(ready.run("grant", "list", "--json").stdout) == json.loads(before)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("grant", "import", "new", "--provider", "nope"), "error[unknown_provider]: no provider named 'nope'"),
        (("grant", "import", "bad name!", "--provider", "sim"), "error[configuration]: "),
        (("export", "{tmp}/exists.bundle", "--passphrase-stdin"), "exists.bundle already exists"),
        (("export", "{tmp}/new.bundle", "--grant", "nope", "--passphrase-stdin"), "error[unknown_grant]"),
    ],
    ids=["unknown-provider", "bad-grant-name", "existing-bundle-file", "unknown-grant"],
)
def test_what_can_be_refused_is_refused_before_the_secret_is_typed(
    ready: CliWorld, tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    """A person is never asked to type a refresh token or a passphrase (twice) that the command then throws away:
    a wrong provider, grant name or bundle file is refused first, with no prompt on the screen."""
    (tmp_path / "exists.bundle").write_bytes(b"someone else's file")
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    terminal: Terminal = spawn(*filled, env=environment(ready.url))
    try:
        terminal.expect(error)
        status = terminal.finish()
    finally:
        terminal.close()
    assert status == 3, terminal.transcript
    assert "Refresh token:" not in terminal.transcript and "passphrase:" not in terminal.transcript
    assert (tmp_path / "exists.bundle").read_bytes() == b"someone else's file"


def test_a_too_short_export_passphrase_is_asked_again(ready: CliWorld, tmp_path: Path) -> None:
    """A passphrase under the minimum length typed at the export prompt is refused on the spot and asked again,
    instead of failing the command after the confirmation."""
    bundle = tmp_path / "short.bundle"
    terminal: Terminal = spawn("export", str(bundle), "--passphrase-stdin", env=environment(ready.url))
    try:
        terminal.type_hidden("Bundle passphrase: ", "short")
        terminal.expect("must be at least")
        terminal.type_hidden("Bundle passphrase: ", "a long enough passphrase")
        terminal.type_hidden("Repeat for confirmation: ", "a long enough passphrase")
        terminal.expect(f"exported 1 grant(s) to {bundle}")
        status = terminal.finish()
    finally:
        terminal.close()
    assert status == 0, terminal.transcript
    assert "Repeat for confirmation" not in terminal.transcript.split("must be at least")[0]
