"""Terminal behaviour as a person meets it (issue 8): the installed ``grantkeeper`` script on a pseudo-terminal
for ``connect --no-browser``, hidden prompts and progress; and the same commands with no terminal at all, as
cron or a CI job runs them, where nothing may prompt, hang, or print an escape code.

Everything is real: the console script in a child process, DOT or the provider simulator over loopback HTTP,
SQLite stores in tmp_path. Every transcript is checked against the secrets that must never reach it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from grantkeeper import Keeper, UnknownGrant
from grantkeeper.cli.main import cli
from grantkeeper.stores import open_store
from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.dot_browser import consent
from tests.dot_server import DotFactory, DotServer
from tests.terminal import (
    ESC,
    Terminal,
    commands,
    environment,
    no_escape,
    run_with_stdout_redirected,
    run_without_terminal,
    spawn,
)

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py

#: What every prompt grantkeeper (or Click on its behalf) can show starts with; none may appear without a TTY.
PROMPTS = ("Refresh token:", "Client secret:", "Bundle passphrase:", "Repeat for confirmation", "[y/N]", "Remove grant")
PASSPHRASE = "correct horse battery staple for the bundle"
URL_LINE = re.compile(r"^ {4}(http://\S+)\r?$", re.MULTILINE)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals a test opened; any still running when it ends (a failed expectation) are stopped."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def _on_terminal(terminals: list[Terminal], *args: str, env: dict[str, str]) -> Terminal:
    terminal = spawn(*args, env=env)
    terminals.append(terminal)
    return terminal


def _stored_refresh_token(url: str, name: str = GRANT) -> str:
    store = open_store(url, create=False)
    try:
        token = store.get_grant(name).refresh_token
    finally:
        store.close()
    assert token is not None
    return token.reveal()


def _has_grant(url: str, name: str = GRANT) -> bool:
    store = open_store(url, create=False)
    try:
        store.get_grant(name)
    except UnknownGrant:
        return False
    finally:
        store.close()
    return True


# ------------------------------------------------------------------------------------- connect, against DOT


@pytest.fixture
def dot(tmp_path: Path, dot_server: DotFactory) -> tuple[DotServer, str]:
    """The default DOT server and a store that knows it as provider "dot" (secret stored, authorize URL set)."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    with Keeper.open(url) as keeper:
        keeper.add_provider(server.provider(authorization_url=server.authorize_url))
    return server, url


def _dot_secrets(server: DotServer) -> set[str]:
    """Every token and authorization code DOT's database holds in plain text (the server is shared by the test
    session, so this is a superset of what one test was issued)."""
    with closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute(
            "SELECT token FROM oauth2_provider_accesstoken UNION SELECT token FROM oauth2_provider_refreshtoken "
            "UNION SELECT code FROM oauth2_provider_grant"
        ).fetchall()
    return {value for (value,) in rows if value}


def _authorization_url(terminal: Terminal) -> str:
    """The URL connect shows, read from the terminal as a person would copy it; returns once connect waits."""
    terminal.expect("Waiting up to")
    found = URL_LINE.findall(terminal.transcript)
    assert len(found) == 1, f"expected one indented URL on the terminal:\n{terminal.transcript}"
    return str(found[0])


def test_connect_no_browser_on_a_terminal(dot: tuple[DotServer, str], terminals: list[Terminal]) -> None:
    """The person runs connect, copies the URL into a browser, logs in and consents at DOT; the browser page
    and the terminal both say it worked, `grantkeeper token` then prints a token DOT accepts, and neither
    terminal ever showed a refresh token, the code, or the client secret."""
    server, url = dot
    env = environment(url)
    terminal = _on_terminal(terminals, "connect", GRANT, "--provider", "dot", "--scope", "read", "--no-browser",
                            env=env)  # fmt: skip
    terminal.expect(f"Open this URL in a browser to connect grant {GRANT}:")
    authorization_url = _authorization_url(terminal)
    assert authorization_url.startswith(server.authorize_url + "?")
    with httpx.Client(timeout=60, follow_redirects=False) as browser:
        callback = consent(browser, server, authorization_url)
        landing = browser.get(callback)
    assert landing.status_code == 200 and "Authorization received" in landing.text
    terminal.expect(f"grant {GRANT} connected: provider dot, scopes read, refresh token fp_")
    assert terminal.finish() == 0, terminal.transcript

    token_terminal = _on_terminal(terminals, "token", GRANT, env=env)
    assert token_terminal.finish() == 0, token_terminal.transcript
    access_token = token_terminal.transcript.strip()
    assert server.resource_status(access_token) == (200, None)

    issued = _dot_secrets(server)
    refresh_token = _stored_refresh_token(url)
    assert {refresh_token, access_token} <= issued  # the database query does see this grant's tokens
    code = httpx.URL(callback).params["code"]
    never_shown = {*issued, code, server.accounts.client_secret}
    for secret in never_shown:
        assert secret not in terminal.transcript
    for secret in never_shown - {access_token}:
        assert secret not in token_terminal.transcript
    no_escape(token_terminal.transcript)  # a token piped from a terminal session must paste cleanly


def test_ctrl_c_while_connect_waits(dot: tuple[DotServer, str], terminals: list[Terminal]) -> None:
    """Ctrl-C at the terminal while connect waits for the browser: exit 130, one 'interrupted' line and no
    traceback, and nothing stored."""
    _, url = dot
    terminal = _on_terminal(terminals, "connect", GRANT, "--provider", "dot", "--no-browser", env=environment(url))
    _authorization_url(terminal)
    terminal.child.send("\x03")
    terminal.expect("grantkeeper: interrupted")
    assert terminal.finish() == 130, terminal.transcript
    assert terminal.transcript.count("grantkeeper: ") == 1  # nothing else reported, as error or warning
    assert "Traceback" not in terminal.transcript and "KeyboardInterrupt" not in terminal.transcript
    assert not _has_grant(url)


def test_consent_denied_in_the_browser(dot: tuple[DotServer, str], terminals: list[Terminal]) -> None:
    """The person presses Cancel at DOT's consent page: the browser page says it failed, the terminal shows
    the typed error with its code, connect exits 10 (ProviderRejected's code), and nothing is stored."""
    server, url = dot
    mark = server.log_mark()
    terminal = _on_terminal(terminals, "connect", GRANT, "--provider", "dot", "--no-browser", env=environment(url))
    authorization_url = _authorization_url(terminal)
    with httpx.Client(timeout=60, follow_redirects=False) as browser:
        landing = browser.get(consent(browser, server, authorization_url, allow=False))
    assert landing.status_code == 400 and "Authorization failed" in landing.text
    terminal.expect("grantkeeper: error[consent_denied]: provider 'dot': consent was refused")
    assert terminal.finish() == 10, terminal.transcript
    assert "Traceback" not in terminal.transcript
    assert not _has_grant(url)
    assert server.token_calls(mark) == []  # no code was exchanged
    assert server.accounts.client_secret not in terminal.transcript


# ------------------------------------------------------------------------------------ prompts on a terminal


def test_grant_import_asks_for_the_token_without_echoing_it(world: CliWorld, terminals: list[Terminal]) -> None:
    """The refresh token is typed at a hidden prompt: the terminal never shows it, and it is what was stored."""
    world.add_provider()
    refresh = world.sim.issue_grant()  # type: ignore[attr-defined]
    world.watch(refresh)
    terminal = _on_terminal(terminals, "grant", "import", GRANT, "--provider", "sim", env=environment(world.url))
    terminal.type_hidden("Refresh token: ", refresh)
    terminal.expect(f"grant {GRANT} imported: provider sim, generation 1, refresh token fp_")
    assert terminal.finish() == 0, terminal.transcript
    assert _stored_refresh_token(world.url) == refresh
    for secret in world.secrets:
        assert secret not in terminal.transcript


def test_export_asks_twice_and_import_once(ready: CliWorld, terminals: list[Terminal], tmp_path: Path) -> None:
    """export asks for the passphrase and its confirmation, and asks again when they differ (a typo would lock
    the bundle for good); import --passphrase-stdin on a terminal asks once, and a wrong passphrase is a typed
    error that creates nothing. No passphrase is echoed, and the grant arrives in the other store with the same
    refresh token."""
    bundle = tmp_path / "grants.bundle"
    exporting = _on_terminal(terminals, "export", str(bundle), "--passphrase-stdin", env=environment(ready.url))
    exporting.type_hidden("Bundle passphrase: ", PASSPHRASE)
    exporting.type_hidden("Repeat for confirmation: ", PASSPHRASE + " typo")
    exporting.expect("Error: The two entered values do not match.")
    exporting.type_hidden("Bundle passphrase: ", PASSPHRASE)
    exporting.type_hidden("Repeat for confirmation: ", PASSPHRASE)
    exporting.expect(f"exported 1 grant(s) to {bundle} (passphrase-protected)")
    assert exporting.finish() == 0, exporting.transcript
    assert "typo" not in exporting.transcript and PASSPHRASE not in exporting.transcript

    other = f"sqlite://{tmp_path}/other.db"
    mistyped = _on_terminal(terminals, "import", str(bundle), "--passphrase-stdin", env=environment(other))
    mistyped.type_hidden("Bundle passphrase: ", "not " + PASSPHRASE)
    mistyped.expect("grantkeeper: error[bundle_auth]: the bundle does not open")
    assert mistyped.finish() == 3, mistyped.transcript
    assert not (tmp_path / "other.db").exists()  # the bundle is opened before the store is created

    importing = _on_terminal(terminals, "import", str(bundle), "--passphrase-stdin", env=environment(other))
    importing.type_hidden("Bundle passphrase: ", PASSPHRASE)
    importing.expect(f"grant {GRANT} imported: provider sim, generation 1, refresh token fp_")
    assert importing.finish() == 0, importing.transcript
    assert importing.transcript.count("Bundle passphrase:") == 1
    assert "Repeat for confirmation" not in importing.transcript and PASSPHRASE not in importing.transcript
    assert _stored_refresh_token(other) == _stored_refresh_token(ready.url)
    for secret in ready.secrets:
        assert secret not in exporting.transcript + mistyped.transcript + importing.transcript


def test_provider_add_asks_for_the_client_secret_hidden(world: CliWorld, terminals: list[Terminal]) -> None:
    """--client-secret-stdin on a terminal is a hidden prompt; the secret typed is the one stored (a refresh
    with it succeeds at the simulator, which checks it)."""
    secret = world.sim.client_secret  # type: ignore[attr-defined]
    terminal = _on_terminal(
        terminals, "provider", "add", "sim", "--token-url", world.sim.url, "--client-id",  # type: ignore[attr-defined]
        world.sim.client_id, "--client-secret-stdin", env=environment(world.url),  # type: ignore[attr-defined]
    )  # fmt: skip
    terminal.type_hidden("Client secret: ", secret)
    terminal.expect("provider sim added: ")
    assert terminal.finish() == 0, terminal.transcript
    assert secret not in terminal.transcript
    world.import_grant()
    refreshed = world.run("refresh", GRANT, "--force")
    assert refreshed.code == 0, refreshed.stderr


def test_keys_rotate_with_progress_on_a_terminal(ready: CliWorld, terminals: list[Terminal]) -> None:
    """keys rotate draws its progress on the terminal (stderr) and finishes with its report; the store still
    works with the new key and the terminal showed no secret."""
    terminal = _on_terminal(terminals, "keys", "rotate", env=environment(ready.url))
    terminal.expect("as the primary key")
    terminal.expect("re-encrypting")  # the bar: Rich draws it once when it starts, whatever the speed
    terminal.expect("re-encrypted ")
    terminal.expect("retired key ")
    assert terminal.finish() == 0, terminal.transcript
    # The control for the no-colour tests below: this environment does get colour, on a terminal.
    assert ESC in terminal.transcript
    for secret in ready.secrets:
        assert secret not in terminal.transcript
    assert ready.run("token", GRANT, token=True).code == 0


def test_demo_live_display_on_a_terminal(terminals: list[Terminal], tmp_path: Path) -> None:
    """demo on a terminal redraws its live panel while the workers run, then prints the verdict and exits 0."""
    terminal = _on_terminal(terminals, "demo", "--seconds", "1", "--processes", "1", "--threads", "2",
                            env=environment(f"sqlite://{tmp_path}/unused.db"))  # fmt: skip
    terminal.expect("grantkeeper demo: 1 processes x 2 threads")
    terminal.expect(" / 1 s")  # the live panel's elapsed row; the summary after it has no such row
    terminal.expect("PASS: ")
    assert terminal.finish() == 0, terminal.transcript
    assert ESC in terminal.transcript


# ------------------------------------------------------------------------- no terminal: nothing ever prompts


def _without_terminal(world: CliWorld, *args: str, stdin: str | None = None, url: str | None = None) -> tuple[
    int, str, str
]:  # fmt: skip
    done = run_without_terminal(*args, env=environment(url or world.url), stdin=stdin)
    for prompt in PROMPTS:
        assert prompt not in done.stderr + done.stdout, f"{args} prompted without a terminal: {done.stderr}"
    no_escape(done.stdout, done.stderr)
    for secret in world.secrets:
        assert secret not in done.stdout + done.stderr
    return done.returncode, done.stdout, done.stderr


def test_without_a_terminal_secrets_come_from_the_pipe(ready: CliWorld, tmp_path: Path) -> None:
    """Every secret-reading command, with its secret piped in and no terminal: it reads the pipe, asks
    nothing, and the value piped is the value used."""
    refresh = ready.sim.issue_grant()  # type: ignore[attr-defined]
    ready.watch(refresh)
    code, _, err = _without_terminal(ready, "grant", "import", "piped", "--provider", "sim", stdin=refresh + "\n")
    assert code == 0, err
    assert _stored_refresh_token(ready.url, "piped") == refresh

    secret = ready.sim.client_secret  # type: ignore[attr-defined]
    code, _, err = _without_terminal(ready, "provider", "add", "sim", "--client-secret-stdin", stdin=secret + "\n")
    assert code == 0, err
    assert ready.run("refresh", GRANT, "--force").code == 0  # the piped secret is the one stored

    bundle = tmp_path / "piped.bundle"
    code, _, err = _without_terminal(ready, "export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert code == 0, err
    other = f"sqlite://{tmp_path}/other.db"
    code, out, err = _without_terminal(ready, "import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n",
                                       url=other)  # fmt: skip
    assert code == 0, err
    assert f"grant {GRANT} imported" in out and _stored_refresh_token(other) == _stored_refresh_token(ready.url)


@pytest.mark.parametrize(
    ("args", "problem", "remedy"),
    [
        (("grant", "import", "new", "--provider", "sim"), "the refresh token on standard input is empty",
         "`grantkeeper grant import new --provider sim < refresh-token.txt`"),
        (("provider", "add", "sim", "--client-secret-stdin"), "the client secret on standard input is empty",
         "`printenv SECRET | grantkeeper provider add sim ... --client-secret-stdin`"),
        (("export", "{tmp}/out.bundle", "--passphrase-stdin"), "the bundle passphrase on standard input is empty",
         "`grantkeeper export {tmp}/out.bundle --passphrase-stdin < pass.txt`"),
        (("import", "{tmp}/in.bundle", "--passphrase-stdin"), "the bundle passphrase on standard input is empty",
         "`grantkeeper import {tmp}/in.bundle --passphrase-stdin < pass.txt`"),
        (("grant", "remove", GRANT), "standard input is not a terminal, so there is nobody to confirm",
         f"'grantkeeper grant remove {GRANT} --yes'"),
    ],
    ids=["grant-import", "provider-add", "export", "import", "grant-remove"],
)  # fmt: skip
def test_without_a_terminal_or_input_it_says_what_to_do(
    ready: CliWorld, tmp_path: Path, args: tuple[str, ...], problem: str, remedy: str
) -> None:
    """stdin is /dev/null and there is no terminal: exit 3 (ConfigurationError) with one error line saying what
    is missing and the command that gives it, no prompt, nothing on stdout, and the store unchanged."""
    bundle = tmp_path / "in.bundle"
    exported = ready.run("export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert exported.code == 0, exported.stderr
    before = ready.run("grant", "list", "--json").stdout
    code, out, err = _without_terminal(ready, *(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    assert code == 3, err
    assert err.startswith("grantkeeper: error[configuration]: ") and err.count("\n") == 1, err
    assert problem in err and remedy.replace("{tmp}", str(tmp_path)) in err
    assert out == ""
    assert ready.run("grant", "list", "--json").stdout == before
    assert not (tmp_path / "out.bundle").exists()


def test_without_a_terminal_keys_commands_do_not_ask(ready: CliWorld) -> None:
    """keys rotate and purge change key files but ask nothing: with no terminal they just run, and rotate's
    progress display leaves no escape code in the log a scheduler keeps."""
    code, out, err = _without_terminal(ready, "keys", "rotate")
    assert code == 0, err
    assert "re-encrypted" in out and "retired key" in out
    code, out, err = _without_terminal(ready, "keys", "purge")
    assert code == 0, err
    assert out.startswith("retired key ") and out.rstrip().endswith("deleted")
    assert ready.run("token", GRANT, token=True).code == 0


def test_without_a_terminal_demo_has_no_live_display(world: CliWorld) -> None:
    """demo in a pipe prints its summary once, as plain text: no live panel redrawn into a log."""
    code, out, err = _without_terminal(world, "demo", "--seconds", "1", "--processes", "1", "--threads", "2")
    assert code == 0, err
    assert "PASS: " in out and "\u256d" not in out  # ╭, the live panel's top-left corner


def test_without_a_terminal_connect_prints_the_url_and_times_out(ready: CliWorld) -> None:
    """connect has nobody to prompt either: it prints the URL on stderr, waits for the redirect for --timeout,
    then exits 6 with the typed error. Nothing is stored and stdout stays empty for a script to read."""
    code, _, err = _without_terminal(
        ready, "provider", "add", "sim", "--authorization-url", "http://127.0.0.1:9/authorize"
    )
    assert code == 0, err
    code, out, err = _without_terminal(ready, "connect", "new", "--provider", "sim", "--no-browser", "--timeout", "1")
    assert code == 6, err
    assert URL_LINE.search(err) and "error[consent_timeout]: no redirect reached http://127.0.0.1:" in err
    assert out == ""
    assert not _has_grant(ready.url, "new")


# ----------------------------------------------------------------------- no terminal: no colour, ever


@pytest.fixture
def busy(ready: CliWorld, tmp_path: Path) -> tuple[CliWorld, Path]:
    """A store with something to show in every column: a refreshed grant with history, a grant whose family
    the provider revoked (a failed attempt, an error, a diagnosis), and a bundle."""
    assert ready.run("refresh", GRANT, "--force").code == 0
    ready.import_grant("revoked")
    assert ready.last_imported is not None
    ready.sim.revoke_family(ready.last_imported)  # type: ignore[attr-defined]
    assert ready.run("refresh", "revoked", "--force").code != 0
    bundle = tmp_path / "listed.bundle"
    assert ready.run("export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n").code == 0
    return ready, bundle


def _read_only_commands(bundle: Path) -> list[tuple[str, ...]]:
    return [
        ("status",), ("status", GRANT), ("status", "revoked"), ("status", "--json"), ("status", "--expiring", "400d"),
        ("grant", "list"), ("grant", "list", "--json"), ("grant", "show", GRANT), ("grant", "show", "revoked"),
        ("provider", "list"), ("provider", "list", "--json"), ("provider", "profiles"),
        ("provider", "profiles", "google"), ("history", GRANT), ("history", "revoked"), ("doctor", GRANT),
        ("doctor", "revoked"), ("doctor", "revoked", "--json"), ("keys", "list"), ("import", str(bundle), "--list"),
        ("import", str(bundle), "--list", "--json"), ("status", "nope"), ("--version",),
    ]  # fmt: skip


def test_read_only_commands_print_no_escape_codes_without_a_terminal(busy: tuple[CliWorld, Path]) -> None:
    """TERM says colours are available, nothing forces or forbids them, stdout and stderr are pipes: every
    read-only command's output is plain text (this holds whatever styling a terminal later gets)."""
    world, bundle = busy
    coloured: list[str] = []
    for args in _read_only_commands(bundle):
        done = run_without_terminal(*args, env=environment(world.url))
        assert done.returncode in (0, 3, 12), f"{args}: exit {done.returncode}: {done.stderr}"
        assert done.stdout or done.stderr, args
        if ESC in done.stdout + done.stderr:
            coloured.append(f"{' '.join(args)}: {(done.stdout + done.stderr)[:300]!r}")
    assert coloured == []


def test_redirected_output_is_plain_when_typed_at_a_terminal(busy: tuple[CliWorld, Path]) -> None:
    """``grantkeeper status > status.txt`` at a terminal: stdin and stderr are the terminal, stdout is a file.
    What goes to the file is plain, so styling must follow the stream written to, not whether a person is
    there."""
    world, bundle = busy
    coloured: list[str] = []
    for args in _read_only_commands(bundle):
        code, out, screen = run_with_stdout_redirected(*args, env=environment(world.url))
        assert code in (0, 3, 12), f"{args}: exit {code}: {screen}"
        if ESC in out:
            coloured.append(f"{' '.join(args)}: {out[:300]!r}")
        for secret in world.secrets:
            assert secret not in out + screen
    assert coloured == []


def test_help_prints_no_escape_codes_without_a_terminal(tmp_path: Path) -> None:
    """--help of the root and of every command and group, found from the command tree so a new command is
    covered when it is added."""
    coloured: list[str] = []
    paths = commands(cli)
    assert ("connect",) in paths and ("grant", "import") in paths
    for path in paths:
        done = run_without_terminal(*path, "--help", env=environment(f"sqlite://{tmp_path}/unused.db"))
        assert done.returncode == 0 and "Usage:" in done.stdout, f"{path}: {done.stderr}"
        if ESC in done.stdout + done.stderr:
            coloured.append(f"{' '.join(path) or '(root)'}: {done.stdout[:300]!r}")
    assert coloured == []


# ------------------------------------------------------------------------------------- --json on a terminal


def test_json_on_a_terminal_is_plain_json(busy: tuple[CliWorld, Path], terminals: list[Terminal]) -> None:
    """--json is for programs even when a person runs it: on a terminal the whole screen is one JSON document
    with no escape code (so it can be copied, or piped through a tool that allocates a pty)."""
    world, bundle = busy
    env = environment(world.url)
    for args in [("status", "--json"), ("status", GRANT, "--json"), ("grant", "list", "--json"),
                 ("grant", "show", "revoked", "--json"), ("provider", "list", "--json"),
                 ("provider", "profiles", "--json"), ("history", "revoked", "--json"), ("doctor", GRANT, "--json"),
                 ("import", str(bundle), "--list", "--json"),
                 ("demo", "--seconds", "1", "--processes", "1", "--threads", "2", "--json")]:  # fmt: skip
        terminal = _on_terminal(terminals, *args, env=env)
        assert terminal.finish() == 0, f"{args}: {terminal.transcript}"
        no_escape(terminal.transcript)
        json.loads(terminal.transcript)  # the terminal's CR LF line ends are JSON whitespace
        for secret in world.secrets:
            assert secret not in terminal.transcript
