"""``grant list``, ``grant show`` and ``grant remove``: what they print, their exit codes, and no prompt without a
terminal. Every output is checked against every secret the world knows (see tests/cli/test_cli.py)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest

from tests.cli.test_cli import GRANT, CliWorld, ready, world

__all__ = ["on_a_terminal", "ready", "world"]  # the fixtures, shared with tests/cli/test_cli.py


def _read_until(master: int, seen: bytearray, wanted: bytes | None) -> None:
    """Read the terminal's output into `seen` until `wanted` appears (None: until the program closes it)."""
    while wanted is None or wanted not in seen:
        ready_fds, _, _ = select.select([master], [], [], 60)
        assert ready_fds, f"no output for 60 s; waiting for {wanted!r}, saw {bytes(seen)!r}"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the program exited and closed the terminal
            chunk = b""
        if not chunk:
            assert wanted is None, f"the program ended before printing {wanted!r}: {bytes(seen)!r}"
            return
        seen += chunk


def on_a_terminal(*args: str, script: list[tuple[str, str]]) -> tuple[int, str]:
    """Run ``python -m grantkeeper ARGS`` on a pseudo-terminal; for each (prompt, reply), wait for the prompt and
    type the reply. Returns the exit status and everything the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "grantkeeper", *args], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = bytearray()
    try:
        for prompt, reply in script:
            _read_until(master, seen, prompt.encode())
            os.write(master, reply.encode())
        _read_until(master, seen, None)
        return proc.wait(timeout=60), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        os.close(master)


class TestList:
    def test_lists_each_grant_with_fingerprints_only(self, ready: CliWorld) -> None:
        ready.import_grant("second")
        out = ready.invoke("grant", "list")
        assert out.code == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[:4] == ["NAME", "PROVIDER", "STATE", "GEN"]
        assert [line.split()[0] for line in lines[1:]] == [GRANT, "second"]
        assert all(" sim " in line and " active " in line for line in lines[1:])

    def test_json_has_the_columns_and_fingerprints(self, ready: CliWorld) -> None:
        assert ready.invoke("refresh", GRANT).code == 0
        out = ready.invoke("grant", "list", "--json")
        assert out.code == 0, out.stderr
        (row,) = json.loads(out.stdout)
        assert row["name"] == GRANT and row["provider"] == "sim" and row["state"] == "active"
        assert row["generation"] == ready.generation()
        assert row["refresh_fp"].startswith("fp_") and row["access_fp"].startswith("fp_")
        assert row["expires_at"] is not None and row["last_error"] is None

    def test_empty_store(self, world: CliWorld) -> None:
        world.add_provider()
        out = world.invoke("grant", "list")
        assert out.code == 0 and "no grants in this store" in out.stdout
        assert json.loads(world.invoke("grant", "list", "--json").stdout) == []


class TestShow:
    def test_is_status_of_the_grant(self, ready: CliWorld) -> None:
        for extra in ([], ["--json"]):
            shown = ready.invoke("grant", "show", GRANT, *extra)
            status = ready.invoke("status", GRANT, *extra)
            assert shown.code == status.code == 0, shown.stderr
            assert shown.stdout.splitlines()[:3] == status.stdout.splitlines()[:3]
        assert json.loads(ready.invoke("grant", "show", GRANT, "--json").stdout)["name"] == GRANT

    def test_unknown_grant_exits_3(self, ready: CliWorld) -> None:
        out = ready.invoke("grant", "show", "nope")
        assert out.code == 3 and "error[unknown_grant]" in out.stderr


class TestRemove:
    def test_yes_removes_without_asking(self, ready: CliWorld) -> None:
        out = ready.invoke("grant", "remove", GRANT, "--yes")
        assert out.code == 0, out.stderr
        assert "removed" in out.stdout and "?" not in out.stderr
        assert json.loads(ready.invoke("grant", "list", "--json").stdout) == []

    def test_without_a_terminal_refuses_and_never_prompts(self, ready: CliWorld) -> None:
        """No TTY and no --yes: exit 3 with the command to run, no prompt even with a 'y' waiting on stdin."""
        for runner in (ready.invoke, ready.run):
            out = runner("grant", "remove", GRANT, stdin="y\n")
            assert out.code == 3, out.stderr
            assert "--yes" in out.stderr and "not a terminal" in out.stderr
            assert "Remove grant" not in out.stderr + out.stdout
        assert ready.generation() == 1  # still there

    @pytest.mark.parametrize(("answer", "code", "kept"), [("y\n", 0, False), ("n\n", 1, True), ("\n", 1, True)])
    def test_on_a_terminal_asks(
        self, ready: CliWorld, monkeypatch: pytest.MonkeyPatch, answer: str, code: int, kept: bool
    ) -> None:
        monkeypatch.setattr("grantkeeper.cli.main._interactive", lambda: True)
        out = ready.invoke("grant", "remove", GRANT, stdin=answer)
        assert out.code == code, out.stderr
        assert f"Remove grant {GRANT!r} from this store?" in out.stderr
        remaining = json.loads(ready.invoke("grant", "list", "--json").stdout)
        assert (remaining != []) is kept

    @pytest.mark.parametrize(("answer", "code", "kept"), [("y", 0, False), ("n", 1, True)])
    def test_on_a_pseudo_terminal(self, ready: CliWorld, answer: str, code: int, kept: bool) -> None:
        """As a person sees it: the question on the terminal, the answer typed, the outcome printed."""
        status, screen = on_a_terminal("--store", ready.url, "grant", "remove", GRANT,
                                       script=[("from this store? [y/N]", answer + "\n")])  # fmt: skip
        assert status == code, screen
        assert ("kept" in screen) is kept and ("removed" in screen) is not kept
        for secret in ready.secrets:
            assert secret not in screen
        assert (json.loads(ready.invoke("grant", "list", "--json").stdout) != []) is kept

    def test_unknown_grant_exits_3_before_asking(self, ready: CliWorld) -> None:
        out = ready.invoke("grant", "remove", "nope")
        assert out.code == 3 and "error[unknown_grant]" in out.stderr and "Remove" not in out.stderr
