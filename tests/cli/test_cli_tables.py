"""Tables: plain, stable text for scripts (pipes, files, CliRunner); a Rich table with colour for a person.

Plain output is what scripts parse, so it must not change when $TERM or $FORCE_COLOR say "colour": only a
real terminal on stdout gets the Rich form, and $NO_COLOR or TERM=dumb take the colour (or the table) away.
Every transcript is checked against every token the simulator issued.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from grantkeeper.cli import _render
from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.terminal import COLOUR, ESCAPE, Screen, on_terminal, terminal_env

__all__ = ["ready", "world"]  # the fixtures, shared with tests/cli/test_cli.py

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def _no_token(world: CliWorld, text: str) -> None:
    for token in world.sim.issued_tokens() | {world.sim.client_secret}:  # type: ignore[attr-defined]
        assert token not in text


def _piped(world: CliWorld, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command with stdout and stderr on pipes, in an environment that asks for colour every way it can."""
    full = {**terminal_env(), "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "CLICOLOR_FORCE": "1", **env}
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", world.url, *args], env=full,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.fixture
def two_providers(ready: CliWorld) -> CliWorld:
    """Grant "g" (refreshed, provider "sim": idle lifetime 30 days) and grant "h" (never refreshed, provider
    "short": its consent ends in 3 days, which only a new consent fixes)."""
    for args in (("sim", "--refresh-idle-ttl", "2592000"), ("short", "--refresh-absolute-ttl", "259200")):
        out = ready.invoke("provider", "add", args[0], "--token-url", ready.sim.url, "--client-id",  # type: ignore[attr-defined]
                           ready.sim.client_id, *args[1:], "--client-secret-stdin",  # type: ignore[attr-defined]
                           stdin=ready.sim.client_secret + "\n")  # type: ignore[attr-defined]  # fmt: skip
        assert out.code == 0, out.stderr
    refresh = ready.sim.issue_grant()  # type: ignore[attr-defined]
    assert ready.invoke("grant", "import", "h", "--provider", "short", stdin=refresh + "\n").code == 0
    assert ready.invoke("refresh", GRANT).code == 0
    return ready


class TestPlainText:
    def test_status_keeps_its_columns_and_has_no_escape_codes(self, two_providers: CliWorld) -> None:
        """Through a pipe, with $TERM, $FORCE_COLOR and $TTY_COMPATIBLE asking for colour, `status` and
        `grant list` print the long-standing plain columns: no escape code, no box drawing."""
        for args in (("status",), ("grant", "list")):
            out = _piped(two_providers, *args)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            assert re.fullmatch(r"NAME\s+PROVIDER\s+STATE\s+GEN\s+ACCESS TOKEN EXPIRES\s+LAST ERROR", lines[0])
            assert re.fullmatch(rf"g\s+sim\s+active\s+2\s+{ISO} \(\d+ s left\)\s+-", lines[1]), lines[1]
            assert re.fullmatch(r"h\s+short\s+active\s+1\s+-\s+-", lines[2]), lines[2]
            assert "\x1b" not in out.stdout + out.stderr and "─" not in out.stdout
            _no_token(two_providers, out.stdout + out.stderr)

    def test_other_tables_stay_plain_in_a_pipe(self, two_providers: CliWorld) -> None:
        """`provider list`, `history` and `status --expiring` keep plain columns through a pipe."""
        expected = {
            ("provider", "list"): r"NAME\s+TOKEN URL\s+CLIENT ID\s+AUTH\s+ROTATION\s+GRACE\s+SKEW\s+CLIENT SECRET",
            ("history", GRANT): r"time\s+id\s+worker\s+gen\s+sent\s+received\s+rotated\s+latency\s+outcome",
            ("status", "--expiring", "7d"): r"GRANT\s+PROVIDER\s+LIFETIME\s+ENDS\s+ACTION",
        }
        for args, header in expected.items():
            out = _piped(two_providers, *args)
            assert out.returncode in (0, 12), out.stderr  # --expiring: a consent ends within the window
            assert re.fullmatch(header, out.stdout.splitlines()[0]), out.stdout
            assert "\x1b" not in out.stdout + out.stderr
        expiring = _piped(two_providers, "status", "--expiring", "7d").stdout.splitlines()
        assert re.fullmatch(rf"h\s+short\s+absolute\s+{ISO} \(in \d+[smhd]\)\s+re-consent needed", expiring[1])

    def test_json_is_the_same_on_a_terminal_and_in_a_pipe(self, two_providers: CliWorld) -> None:
        """--json never colours and never changes shape: the terminal shows the same JSON a pipe gets."""
        piped = _piped(two_providers, "grant", "list", "--json")
        screen = on_terminal("--store", two_providers.url, "grant", "list", "--json")
        assert screen.status == 0, screen.text
        assert "\x1b" not in screen.text and "\x1b" not in piped.stdout
        on_tty, in_pipe = json.loads(screen.text.replace("\r\n", "\n")), json.loads(piped.stdout)
        assert [sorted(d) for d in on_tty] == [sorted(d) for d in in_pipe]
        assert [d["name"] for d in on_tty] == ["g", "h"]
        _no_token(two_providers, screen.text)

    def test_term_dumb_keeps_plain_text_on_a_terminal(self, two_providers: CliWorld) -> None:
        """TERM=dumb: a terminal that cannot move the cursor gets the plain columns, not a Rich table."""
        screen = on_terminal("--store", two_providers.url, "status", env=terminal_env(TERM="dumb"))
        assert screen.status == 0, screen.text
        assert "\x1b" not in screen.text
        assert re.match(r"NAME\s+PROVIDER\s+STATE\s+GEN\s+ACCESS TOKEN EXPIRES", screen.text)


class TestOnATerminal:
    def _status(self, world: CliWorld, **env: str | None) -> Screen:
        screen = on_terminal("--store", world.url, "status", env=terminal_env(**env))
        assert screen.status == 0, screen.text
        _no_token(world, screen.text)
        return screen

    def test_status_is_a_table_with_colour_for_health_and_time_left(self, two_providers: CliWorld) -> None:
        """On a terminal, `status` shows relative times (the access token, and the first end of the refresh
        token with its kind) and colours: green for a healthy grant, bold red for a consent that ends soon."""
        screen = self._status(two_providers)
        assert COLOUR.search(screen.text), screen.text
        plain = screen.plain
        assert re.search(r"ACCESS TOKEN\s+REFRESH TOKEN ENDS", plain)
        assert re.search(r"\bg\s+sim\s+active\s+2\s+in \d+m\s+in 30d \(idle\)", plain), plain
        assert re.search(r"\bh\s+short\s+active\s+1\s+-\s+in 3d \(absolute\)", plain), plain
        assert re.search(r"\x1b\[32mactive", screen.text)  # g: healthy
        assert re.search(r"\x1b\[1;31mactive", screen.text)  # h: its consent ends within a week
        assert re.search(r"\x1b\[1;31min 3d \(absolute\)", screen.text)

    def test_grant_list_is_the_same_table(self, two_providers: CliWorld) -> None:
        """`grant list` shows the same coloured table as `status`."""
        screen = on_terminal("--store", two_providers.url, "grant", "list")
        assert screen.status == 0, screen.text
        assert re.search(r"\x1b\[32mactive", screen.text) and "REFRESH TOKEN ENDS" in screen.plain
        _no_token(two_providers, screen.text)

    def test_a_grant_that_needs_reauth_is_red(self, ready: CliWorld) -> None:
        """A revoked grant's state is shown as needs_reauth in red."""
        assert ready.last_imported is not None
        ready.sim.revoke_family(ready.last_imported)  # type: ignore[attr-defined]
        assert ready.invoke("refresh", GRANT, "--force").code == 5
        screen = self._status(ready)
        assert re.search(r"\x1b\[1;31mneeds_reauth", screen.text), screen.text

    def test_no_color_removes_every_colour(self, two_providers: CliWorld) -> None:
        """NO_COLOR=1 (https://no-color.org): the same table, without a single colour code."""
        screen = self._status(two_providers, NO_COLOR="1")
        assert not COLOUR.search(screen.text), screen.text
        assert "\x1b[1;31m" not in screen.text and "\x1b[32m" not in screen.text
        assert re.search(r"\bh\s+short\s+active\s+1\s+-\s+in 3d \(absolute\)", screen.plain)

    def test_provider_text_is_never_markup(self, world: CliWorld) -> None:
        """A client id that looks like Rich markup prints literally on a terminal; control characters are
        replaced in both forms."""
        evil = "[bold red]evil[/] [link=http://x]y[/link]"
        out = world.invoke("provider", "add", "sim", "--token-url", world.sim.url, "--client-id", evil,  # type: ignore[attr-defined]
                           "--client-secret-stdin", stdin=world.sim.client_secret + "\n")  # type: ignore[attr-defined]  # fmt: skip
        assert out.code == 0, out.stderr
        screen = on_terminal("--store", world.url, "provider", "list")
        assert screen.status == 0, screen.text
        assert evil in screen.plain
        assert "\x1b]8;" not in screen.text  # no hyperlink escape

    def test_other_tables_use_the_same_rendering(self, two_providers: CliWorld) -> None:
        """`history` and `status --expiring` are Rich tables on a terminal too (box-drawing rule under the
        header); --expiring shows relative times and still exits 12 for a consent that ends."""
        history = on_terminal("--store", two_providers.url, "history", GRANT)
        assert history.status == 0 and "─" in history.text, history.text
        assert re.search(r"\x1b\[32mcommitted", history.text), history.text  # a successful attempt is green
        expiring = on_terminal("--store", two_providers.url, "status", "--expiring", "7d")
        assert expiring.status == 12, expiring.text
        assert re.search(r"\bh\s+short\s+absolute\s+in 3d\s+re-consent needed", expiring.plain), expiring.plain
        _no_token(two_providers, history.text + expiring.text)


class TestRelativeTimes:
    @pytest.mark.parametrize(
        ("delta", "text"),
        [(0, "in 0s"), (42, "in 42s"), (89, "in 89s"), (42 * 60, "in 42m"), (5 * 3600, "in 5h"),
         (30 * 86400, "in 30d"), (-3 * 3600, "expired 3h ago"), (-120, "expired 2m ago")],
    )  # fmt: skip
    def test_units(self, delta: float, text: str) -> None:
        """Seconds up to 90 s, minutes up to 90 min, hours up to 48 h, then days; past times say "expired"."""
        assert _render.relative(1_000_000.0 + delta, 1_000_000.0) == text


def test_escape_patterns_match_what_rich_writes() -> None:
    """The transcript checks above rely on these patterns: prove they see Rich's colour codes."""
    assert COLOUR.search("\x1b[32mactive\x1b[0m") and COLOUR.search("\x1b[1;31mx") and COLOUR.search("\x1b[38;5;9mx")
    assert not COLOUR.search("\x1b[1mNAME\x1b[0m\x1b[2m-\x1b[0m")
    assert ESCAPE.sub("", "\x1b[1mNAME\x1b[0m") == "NAME"
