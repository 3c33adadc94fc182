"""Progress bars: on stderr, only for a person at a terminal, never in a pipe or with --json; and the library's
``progress(done, total)`` callbacks behind them.

The terminal tests send stdout to a file, so the pseudo-terminal shows stderr alone: the bar must be there and
the command's result must be in the file, plain. Every transcript is checked against every token the
simulator issued.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grantkeeper import AsyncKeeper, Keeper
from grantkeeper.bundle import BundleKey, export_bundle, import_bundle
from grantkeeper.keys.sources import generate_key, write_key_file
from tests.cli.test_cli import CliWorld, world
from tests.terminal import Screen, on_terminal, terminal_env

__all__ = ["world"]  # the fixture, shared with tests/cli/test_cli.py

GRANTS = ("a", "b", "c")


def _no_token(world: CliWorld, *texts: str) -> None:
    for token in world.sim.issued_tokens() | {world.sim.client_secret}:  # type: ignore[attr-defined]
        for text in texts:
            assert token not in text


@pytest.fixture
def due(world: CliWorld) -> CliWorld:
    """Three grants of a provider whose refresh tokens die after an hour idle: all due within 2h."""
    out = world.invoke("provider", "add", "sim", "--token-url", world.sim.url, "--client-id", world.sim.client_id,  # type: ignore[attr-defined]
                       "--client-secret-stdin", "--refresh-idle-ttl", "3600",
                       stdin=world.sim.client_secret + "\n")  # type: ignore[attr-defined]  # fmt: skip
    assert out.code == 0, out.stderr
    for name in GRANTS:
        world.import_grant(name)
    return world


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.key"
    write_key_file(path, [generate_key()], exclusive=True)
    return path


def _bar_shown(screen: Screen, label: str) -> None:
    assert screen.status == 0, screen.text
    assert label in screen.plain and "━" in screen.plain, screen.text
    assert f"{len(GRANTS)}/{len(GRANTS)}" in screen.plain, screen.text  # the last update is drawn before it goes


class TestOnATerminal:
    @pytest.mark.parametrize("command", [("refresh", "--due", "--window", "2h"), ("keepalive", "--margin", "2h")])
    def test_keepalive_shows_a_bar_on_stderr_and_plain_results_on_stdout(
        self, due: CliWorld, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        """`refresh --due` and `keepalive` draw a bar on the terminal (stderr) while stdout, a file, gets
        the plain per-grant lines."""
        out = tmp_path / "stdout.txt"
        screen = on_terminal("--store", due.url, *command, stdout=out)
        _bar_shown(screen, "refreshing grants")
        lines = out.read_text().splitlines()
        assert [line.split(":")[0] for line in lines] == list(GRANTS)
        assert all(": refreshed (deadline " in line for line in lines)
        assert "\x1b" not in out.read_text()
        _no_token(due, screen.text, out.read_text())

    def test_export_and_import_show_a_bar(self, due: CliWorld, tmp_path: Path, key_file: Path) -> None:
        """`export` and `import` of a bundle with several grants draw a bar on stderr."""
        bundle, out = tmp_path / "grants.gkb", tmp_path / "stdout.txt"
        exported = on_terminal("--store", due.url, "export", str(bundle), "--key-file", str(key_file), stdout=out)
        _bar_shown(exported, "exporting grants")
        assert out.read_text().startswith("exported 3 grant(s)")
        target = f"sqlite://{tmp_path}/target.db"
        imported = on_terminal("--store", target, "import", str(bundle), "--key-file", str(key_file), stdout=out)
        _bar_shown(imported, "importing grants")
        assert [line.split(":")[0] for line in out.read_text().splitlines()[:3]] == [f"grant {n} imported"
                                                                                   for n in GRANTS]  # fmt: skip
        _no_token(due, exported.text, imported.text, out.read_text())

    def test_import_list_is_an_indented_table(self, due: CliWorld, tmp_path: Path, key_file: Path) -> None:
        """`import --list` on a terminal: the summary line, then the grants as a table indented under it."""
        bundle = tmp_path / "grants.gkb"
        assert due.run("export", str(bundle), "--key-file", str(key_file)).code == 0
        screen = on_terminal("import", str(bundle), "--list")
        assert screen.status == 0, screen.text
        lines = screen.plain.splitlines()
        assert lines[0].startswith("bundle format ") and lines[0].endswith("3 grant(s):")
        assert re.fullmatch(r"  GRANT\s+REFRESH TOKEN\s*", lines[1]) and "─" in lines[2]
        assert [line.split()[0] for line in lines[3:6]] == list(GRANTS)

    def test_keys_rotate_shows_a_bar(self, due: CliWorld, tmp_path: Path) -> None:
        """`keys rotate` re-encrypts every stored value behind the same bar."""
        out = tmp_path / "stdout.txt"
        screen = on_terminal("--store", due.url, "keys", "rotate", stdout=out)
        assert screen.status == 0, screen.text
        assert "re-encrypting" in screen.plain and "━" in screen.plain, screen.text
        assert "re-encrypted" in out.read_text()
        _no_token(due, screen.text, out.read_text())

    def test_one_grant_gets_no_bar(self, world: CliWorld, tmp_path: Path, key_file: Path) -> None:
        """A bar for a single grant is noise: none is drawn."""
        world.add_provider()
        world.import_grant("only")
        screen = on_terminal("--store", world.url, "export", str(tmp_path / "b"), "--key-file", str(key_file))
        assert screen.status == 0, screen.text
        assert "exporting grants" not in screen.plain and "1/1" not in screen.plain

    def test_json_on_a_terminal_draws_no_bar(self, due: CliWorld) -> None:
        """With --json nothing but the JSON reaches the terminal: no bar, no escape code."""
        screen = on_terminal("--store", due.url, "keepalive", "--margin", "2h", "--json")
        assert screen.status == 0, screen.text
        assert "\x1b" not in screen.text and "refreshing grants" not in screen.text
        assert [r["grant"] for r in json.loads(screen.text.replace("\r\n", "\n"))] == list(GRANTS)
        _no_token(due, screen.text)


class TestWithoutATerminal:
    def test_pipes_get_no_bar(self, due: CliWorld, tmp_path: Path, key_file: Path) -> None:
        """Through pipes, even with $TERM asking for colour, stderr has no bar and no escape code."""
        env = {**terminal_env(), "FORCE_COLOR": "1"}
        for args in (("refresh", "--due", "--window", "2h"), ("keepalive", "--margin", "2h"),
                     ("export", str(tmp_path / "b"), "--key-file", str(key_file))):  # fmt: skip
            proc = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", due.url, *args], env=env,
                                  capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert "\x1b" not in proc.stdout + proc.stderr
            assert "grants" not in proc.stderr.replace("grantkeeper:", "")  # no "refreshing/exporting grants"
            assert "━" not in proc.stderr
            _no_token(due, proc.stdout, proc.stderr)


class TestLibraryCallbacks:
    def test_keepalive_reports_each_grant(self, due: CliWorld) -> None:
        """Keeper.keepalive calls progress(0, n) first and then (i, n) after each grant."""
        seen: list[tuple[int, int]] = []
        with Keeper.open(due.url, create=False) as keeper:
            results = keeper.keepalive(margin=7200, progress=lambda done, total: seen.append((done, total)))
        assert [r.action for r in results] == ["refreshed"] * 3
        assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    @pytest.mark.anyio
    async def test_async_keepalive_reports_each_grant(self, due: CliWorld) -> None:
        """AsyncKeeper.keepalive reports the same sequence."""
        seen: list[tuple[int, int]] = []

        async with await AsyncKeeper.open(due.url, create=False) as keeper:
            await keeper.keepalive(margin=7200, progress=lambda done, total: seen.append((done, total)))
        assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    def test_keepalive_with_nothing_due_reports_zero(self, due: CliWorld) -> None:
        """Nothing due: one call, progress(0, 0), so a caller can tell "nothing to do" from "not started"."""
        seen: list[tuple[int, int]] = []
        with Keeper.open(due.url, create=False) as keeper:
            assert keeper.keepalive(margin=0, progress=lambda done, total: seen.append((done, total))) == []
        assert seen == [(0, 0)]

    def test_bundle_export_and_import_report_each_grant(self, due: CliWorld, tmp_path: Path, key_file: Path) -> None:
        """export_bundle reports after each grant read, import_bundle after each grant written."""
        key = BundleKey.key_file(key_file)
        exported: list[tuple[int, int]] = []
        imported: list[tuple[int, int]] = []
        with Keeper.open(due.url, create=False) as keeper:
            data = export_bundle(keeper.store, key, now=0.0, progress=lambda d, t: exported.append((d, t)))
        with Keeper.open(f"sqlite://{tmp_path}/other.db") as other:
            import_bundle(other.store, data, key, now=0.0, progress=lambda d, t: imported.append((d, t)))
        assert exported == imported == [(1, 3), (2, 3), (3, 3)]
