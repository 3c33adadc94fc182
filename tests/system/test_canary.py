"""The canary suite: I6 as a proven property.

Every scenario below runs against a provider simulator whose refresh tokens, access tokens and client secret
are distinctive canaries. Everything a user could see is captured: log records of every logger at DEBUG
(``httpx`` and ``httpcore`` included), stdout and stderr of CLI commands at every verbosity (except
``grantkeeper token``, whose job is to print an access token), exception strings, reprs, evidence and rendered
tracebacks, the bytes of every file under the test directory (store, WAL, key file, recovery files) and
PostgreSQL table text. The suite fails if any canary, or any 8-character fragment of one, appears in any
capture.

Scenarios are a table: a new one (a new CLI command, a webhook payload) is one `Scenario` entry whose function
drives it through `World` and adds what it produced with `World.capture`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import GrantkeeperError, Keeper, Secret
from grantkeeper.cli.main import cli
from grantkeeper.redact.tracebacks import format_exception
from grantkeeper.stores import SQLiteStore
from grantkeeper.testing import DropAfterRotate, HttpError, Malformed
from grantkeeper.testing.simulator import MALFORMED_KINDS, ProviderSimulator
from tests.helpers import FAST_POLICY, provider_for, store_locked_at

FRAGMENT = 8
CANARY_MARK = "cNrY"  # every canary starts with it, so even a short cut of one is recognisable


class CanarySimulator(ProviderSimulator):
    """A provider simulator whose every token is a canary."""

    def _new_token(self, *, jwt: bool = False) -> str:
        token = super()._new_token(jwt=jwt)
        return token if jwt else f"{CANARY_MARK}{token[4:]}"


@dataclass
class World:
    """One scenario's provider, store and captures."""

    tmp_path: Path
    sim: CanarySimulator
    url: str
    captures: list[tuple[str, str]] = field(default_factory=list)
    extra_canaries: set[str] = field(default_factory=set)

    def capture(self, name: str, data: object) -> None:
        text = data.decode("latin-1") if isinstance(data, bytes) else data if isinstance(data, str) else repr(data)
        self.captures.append((name, text))

    def keeper(self, **options: Any) -> Keeper:
        return Keeper.open(self.url, policy=FAST_POLICY, **options)

    def attempt(self, name: str, fn: Callable[[], object], *, show_result: bool = True) -> object:
        """Run `fn`; capture its result (unless it is a token) or every rendering of its error."""
        try:
            result = fn()
        except GrantkeeperError as exc:
            self.capture_exception(name, exc)
            return exc
        if show_result:
            self.capture(name, result)
        return result

    def capture_exception(self, name: str, exc: BaseException) -> None:
        self.capture(f"{name}: str", str(exc))
        self.capture(f"{name}: repr", repr(exc))
        self.capture(f"{name}: args", exc.args)
        if isinstance(exc, GrantkeeperError):
            self.capture(f"{name}: evidence", json.dumps(exc.evidence(), default=str))
        self.capture(f"{name}: traceback", "".join(traceback.format_exception(exc)))
        self.capture(f"{name}: traceback with locals (redacted)", format_exception(exc, with_locals=True))

    def cli(self, *args: str, stdin: str = "") -> None:
        """Run a CLI command at both verbosities; capture stdout and stderr of each."""
        for verbosity in ([], ["-v"]):
            result = CliRunner().invoke(cli, ["--store", self.url, *verbosity, *args], input=stdin)
            label = " ".join(["grantkeeper", *verbosity, *args])
            self.capture(f"{label}: stdout", result.stdout)
            self.capture(f"{label}: stderr", result.stderr)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                self.capture_exception(label, result.exception)

    def canaries(self) -> set[str]:
        return set(self.sim.issued_tokens()) | {self.sim.client_secret} | self.extra_canaries


def _grant(world: World, keeper: Keeper, *, name: str = "g", **provider: Any) -> None:
    keeper.add_provider(provider_for(world.sim, **provider))
    keeper.import_grant(name, provider="sim", refresh_token=world.sim.issue_grant())


# --- scenarios ----------------------------------------------------------------------------------------------


def success(world: World) -> None:
    with world.keeper() as keeper:
        _grant(world, keeper)
        world.attempt("refresh", lambda: keeper.refresh("g"))
        world.attempt("access_token", lambda: keeper.access_token("g"), show_result=False)
        world.attempt("forced refresh", lambda: keeper.refresh("g", force=True))
        world.capture("status", keeper.status("g"))
        world.capture("status json", json.dumps(keeper.status("g").as_dict()))
        world.capture("grant", keeper.store.get_grant("g"))
        world.capture("provider", keeper.store.get_provider("sim"))
        world.capture("attempts", keeper.store.list_attempts("g"))


def fault(*faults: Any, times: int = 1, **provider: Any) -> Callable[[World], None]:
    def scenario(world: World) -> None:
        with world.keeper() as keeper:
            _grant(world, keeper, **provider)
            world.attempt("first refresh", lambda: keeper.refresh("g"))
            for f in faults:
                world.sim.inject(f, times=times)
                world.attempt(f"refresh under {f!r}", lambda: keeper.refresh("g", force=True))
            world.attempt("afterwards", lambda: keeper.refresh("g", force=True))
            world.capture("status", keeper.status("g"))
            world.capture("attempts", keeper.store.list_attempts("g"))

    return scenario


def wrong_client_secret(world: World) -> None:
    wrong = f"{CANARY_MARK}-wrong-client-secret-{secrets.token_urlsafe(12)}"
    world.extra_canaries.add(wrong)
    with world.keeper() as keeper:
        _grant(world, keeper)
        keeper.add_provider(dataclasses.replace(provider_for(world.sim), client_secret=Secret(wrong)))
        world.attempt("refresh with a wrong client secret", lambda: keeper.refresh("g", force=True))
        world.capture("status", keeper.status("g"))


def bad_store_and_key(world: World) -> None:
    """Opening with the wrong key, then a damaged store file: configuration errors, rendered everywhere."""
    from grantkeeper.keys.sources import encode_key

    with world.keeper() as keeper:
        _grant(world, keeper)
        world.attempt("refresh", lambda: keeper.refresh("g"))
    os.environ["GRANTKEEPER_KEY"] = encode_key(bytes(32))
    world.attempt("open with the wrong key", lambda: Keeper.open(world.url).close())
    del os.environ["GRANTKEEPER_KEY"]
    world.cli("status", "g")
    db = Path(world.url.removeprefix("sqlite://"))
    data = bytearray(db.read_bytes())
    data[100:4096] = bytes(len(data[100:4096]))
    db.write_bytes(bytes(data))
    world.attempt("open a damaged store", lambda: Keeper.open(world.url).close())
    world.cli("status", "g")


def revoked(world: World) -> None:
    with world.keeper() as keeper:
        _grant(world, keeper, grace=30)
        world.attempt("refresh", lambda: keeper.refresh("g"))
        token = keeper.store.get_grant("g").refresh_token
        assert token is not None
        world.sim.revoke_family(token.reveal())
        world.attempt("refresh after revocation", lambda: keeper.refresh("g", force=True))
        world.attempt("access token after revocation", lambda: keeper.access_token("g"), show_result=False)
        world.capture("status", keeper.status("g"))


def store_locked_at_commit(world: World) -> None:
    """The store cannot be written at commit: the successor goes to a recovery file, then is replayed."""
    db = Path(world.url.removeprefix("sqlite://"))
    with world.keeper() as keeper:
        _grant(world, keeper)
    keeper = Keeper(SQLiteStore.open(db, busy_timeout=0.2), policy=FAST_POLICY)
    with store_locked_at(db):
        world.attempt("access token while the store is locked", lambda: keeper.access_token("g"), show_result=False)
        world.capture("recovery files while locked", b"".join(p.read_bytes() for p in db.parent.rglob("*.gkr")))
    world.attempt("replay", lambda: keeper.store.replay_recovery(now=0.0))
    world.attempt("refresh after replay", lambda: keeper.refresh("g", force=True))
    keeper.close()


CRASH_CHILD = """
import logging, sys
from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
logging.basicConfig(level=logging.DEBUG)  # every logger, httpx and httpcore included, to stderr
with Keeper.open(sys.argv[1], policy=RefreshPolicy(lease_ttl=1.5, request_timeout=0.25, deadline=10)) as keeper:
    try:
        print(keeper.refresh("g", force=True).generation)
    except GrantkeeperError as exc:
        print(exc, file=sys.stderr)
"""


def crash_after_send(world: World) -> None:
    """A worker is SIGKILLed after the provider answered; the next one recovers (DEBUG logs on)."""
    with world.keeper() as keeper:
        _grant(world, keeper, grace=30)
    env = {**os.environ, "GRANTKEEPER_FAILPOINTS": "after_send=kill"}
    child = subprocess.run([sys.executable, "-c", CRASH_CHILD, world.url], env=env, capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert child.returncode == -signal.SIGKILL
    world.capture("killed child stdout", child.stdout)
    world.capture("killed child stderr", child.stderr)
    env.pop("GRANTKEEPER_FAILPOINTS")
    survivor = subprocess.run([sys.executable, "-c", CRASH_CHILD, world.url], env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    world.capture("next worker stdout", survivor.stdout)
    world.capture("next worker stderr", survivor.stderr)
    with world.keeper() as keeper:
        world.capture("attempts", keeper.store.list_attempts("g"))
        world.capture("status", keeper.status("g"))


def async_keeper(world: World) -> None:
    """The asyncio keeper: concurrent tasks at expiry, a transient failure and a revocation."""
    import asyncio

    from grantkeeper import AsyncKeeper

    with world.keeper() as keeper:
        _grant(world, keeper)

    async def drive() -> None:
        async with await AsyncKeeper.open(world.url, policy=FAST_POLICY) as keeper:
            tokens = await asyncio.gather(*(keeper.access_token("g") for _ in range(20)))
            assert len(set(tokens)) == 1
            world.sim.inject(HttpError(503))
            world.capture("async refresh after 503", await keeper.refresh("g", force=True))
            token = (await asyncio.to_thread(keeper.store.get_grant, "g")).refresh_token
            assert token is not None
            world.sim.revoke_family(token.reveal())
            try:
                await keeper.refresh("g", force=True)
            except GrantkeeperError as exc:
                world.capture_exception("async refresh after revocation", exc)

    asyncio.run(drive())


def cli_commands(world: World) -> None:
    """Every command but `token`, at default and -v verbosity, including failing ones."""
    sim = world.sim
    world.cli("provider", "add", "sim", "--token-url", sim.url, "--client-id", sim.client_id,
              "--client-secret-stdin", stdin=sim.client_secret + "\n")  # fmt: skip
    world.cli("grant", "import", "g", "--provider", "sim", stdin=sim.issue_grant() + "\n")
    assert any("grant g imported" in text for _, text in world.captures)
    for args in (["provider", "list"], ["provider", "list", "--json"], ["refresh", "g"], ["refresh", "g", "--force"],
                 ["status"], ["status", "g"], ["status", "g", "--json"], ["keepalive"], ["keepalive", "--json"],
                 ["keys", "list"], ["keys", "rotate"], ["keys", "purge"], ["migrate"], ["status", "nope"],
                 ["history", "g"], ["history", "g", "--json"], ["doctor", "g"], ["doctor", "g", "--json"]):  # fmt: skip
        world.cli(*args)
    world.sim.inject(HttpError(503), times=20)
    world.cli("refresh", "g", "--force")
    world.sim.clear_faults()
    with world.keeper() as keeper:
        token = keeper.store.get_grant("g").refresh_token
    assert token is not None
    world.sim.revoke_family(token.reveal())
    world.cli("refresh", "g", "--force")
    for args in (["status", "g"], ["history", "g", "--json"], ["doctor", "g"], ["doctor", "g", "--json"]):
        world.cli(*args)
    outputs = "".join(text for _, text in world.captures)
    assert "refreshed: generation" in outputs and "error[" in outputs and "re-encrypted" in outputs


def export_and_import(world: World) -> None:
    """Export a bundle (passphrase and key file), list it, import it elsewhere (also refused, wrong passphrase,
    tampered), refresh there: every output is captured, and the bundle files in tmp_path are scanned as bytes."""
    with world.keeper() as keeper:
        _grant(world, keeper)
        keeper.refresh("g", force=True)
    passphrase = f"{CANARY_MARK}{secrets.token_urlsafe(16)}"
    world.extra_canaries.add(passphrase)
    key_file = world.tmp_path / "bundle.key"
    key_file.write_bytes(secrets.token_bytes(32))
    key_file.chmod(0o600)
    with_pass, with_key = world.tmp_path / "pass.gkb", world.tmp_path / "key.gkb"
    world.cli("export", str(with_pass), "--passphrase-stdin", stdin=passphrase + "\n")
    world.cli("export", str(with_key), "--key-file", str(key_file))
    target = f"sqlite://{world.tmp_path}/target.db"
    tampered = world.tmp_path / "tampered.gkb"
    tampered.write_bytes(with_pass.read_bytes()[:-1] + bytes([with_pass.read_bytes()[-1] ^ 1]))
    for args, stdin in (
        (["import", str(with_pass), "--list"], ""),
        (["import", str(with_pass), "--list", "--json"], ""),
        (["import", str(with_pass), "--passphrase-stdin"], "wrong passphrase\n"),
        (["import", str(tampered), "--passphrase-stdin"], passphrase + "\n"),
        (["import", str(with_pass), "--passphrase-stdin"], passphrase + "\n"),
        (["import", str(with_key), "--key-file", str(key_file), "--replace", "--json"], ""),
        (["import", str(with_key), "--key-file", str(key_file)], ""),
        (["refresh", "g", "--force"], ""),
        (["grant", "list", "--json"], ""),
        (["grant", "remove", "g"], ""),
        (["grant", "remove", "g", "--yes"], ""),
    ):
        world.cli("--store", target, *args, stdin=stdin)
    outputs = "".join(text for _, text in world.captures)
    assert "grant g imported" in outputs and "error[bundle_auth]" in outputs and "error[bundle_conflict]" in outputs


def events_and_webhook(world: World) -> None:
    """Grant events (client auth failure, needs re-consent) through a callback and a signed webhook: the
    delivered bodies and headers, and every event's repr and JSON."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from grantkeeper import GrantEvent
    from grantkeeper.notify import Webhook

    delivered: list[tuple[str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            delivered.append((str(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook_secret = f"{CANARY_MARK}-webhook-secret-{secrets.token_urlsafe(12)}"
    wrong = f"{CANARY_MARK}-wrong-client-secret-{secrets.token_urlsafe(12)}"
    world.extra_canaries |= {webhook_secret, wrong}
    webhook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", secret=webhook_secret, backoff=0.01)
    events: list[GrantEvent] = []

    def on_event(event: GrantEvent) -> None:
        events.append(event)
        webhook(event)

    try:
        with world.keeper(on_event=on_event) as keeper:
            _grant(world, keeper)
            keeper.add_provider(dataclasses.replace(provider_for(world.sim), client_secret=Secret(wrong)))
            world.attempt("refresh with a wrong client secret", lambda: keeper.refresh("g", force=True))
            keeper.add_provider(provider_for(world.sim))
            world.attempt("refresh", lambda: keeper.refresh("g", force=True))
            token = keeper.store.get_grant("g").refresh_token
            assert token is not None
            world.sim.revoke_family(token.reveal())
            world.attempt("refresh after revocation", lambda: keeper.refresh("g", force=True))
        webhook.close()
    finally:
        server.shutdown()
        server.server_close()
    assert {e.kind for e in events} == {"client_auth_failed", "needs_reauth"} and len(delivered) == len(events)
    for event in events:
        world.capture("event repr", event)
        world.capture("event json", json.dumps(event.as_dict(), default=str))
    for headers, body in delivered:
        world.capture("webhook headers", headers)
        world.capture("webhook body", body)
    world.capture("webhook repr", webhook)


def app_logging_through_the_filters(world: World) -> None:
    """An application logging the canaries itself, through each redaction helper (the second line)."""
    from grantkeeper.redact import RedactingFilter
    from grantkeeper.redact.httpx import RedactingLogTransport, event_hooks

    with world.keeper() as keeper:
        _grant(world, keeper)
        access = keeper.access_token("g")
        refresh = keeper.store.get_grant("g").refresh_token
    assert refresh is not None
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    app = logging.getLogger("app.canary")
    app.addHandler(handler)
    try:
        app.warning("calling with Authorization: Bearer %s", access)
        app.info("body %s", f"grant_type=refresh_token&refresh_token={refresh.reveal()}")
        app.info("token response %s", json.dumps({"access_token": access, "refresh_token": refresh.reveal()}))
        app.info("pasted %s into a message", refresh.reveal())
        app.info("with extra", extra={"refresh_token": refresh.reveal(), "request": {"client_secret": "x"}})
        transport = RedactingLogTransport(httpx.HTTPTransport())
        with httpx.Client(event_hooks=event_hooks(), transport=transport) as client:
            client.get(world.sim.base_url + "/resource", headers={"Authorization": f"Bearer {access}"})
    finally:
        app.removeHandler(handler)
    world.capture("application log through RedactingFilter", stream.getvalue())


def postgres_store(world: World) -> None:
    """Success and failures on the PostgreSQL store; every table's text is captured too."""
    import psycopg

    from grantkeeper.stores import open_store
    from tests.conftest import TEST_KEY

    pg_url: str = world.pg_url()  # type: ignore[attr-defined]
    os.environ["GRANTKEEPER_KEY"] = TEST_KEY
    os.environ["GRANTKEEPER_RECOVERY_DIR"] = str(world.tmp_path / "pg-recovery")
    open_store(pg_url, migrate=True).close()
    world.url = pg_url
    success(world)
    revoked(world)
    with psycopg.connect(pg_url) as conn:
        for table in ("grants", "providers", "attempts", "leases", "meta"):
            row = conn.execute(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t").fetchone()
            world.capture(f"postgres table {table}", row[0] if row else "")


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[World], None]
    postgres: bool = False


SCENARIOS = [
    Scenario("success", success),
    Scenario("transient 503 then success", fault(HttpError(503))),
    Scenario("429 with Retry-After", fault(HttpError(429, retry_after=0))),
    Scenario("retries exhausted", fault(HttpError(500), times=20)),
    Scenario("ambiguous: connection dropped after rotation", fault(DropAfterRotate(), grace=30)),
    *[Scenario(f"malformed response: {kind}", fault(Malformed(kind))) for kind in sorted(MALFORMED_KINDS)],
    Scenario("lost in flight: dropped after rotation, no grace", fault(DropAfterRotate())),
    Scenario("provider rejected: invalid_scope", fault(HttpError(400, error="invalid_scope"))),
    Scenario("wrong client secret", wrong_client_secret),
    Scenario("wrong key, damaged store file", bad_store_and_key),
    Scenario("revoked grant", revoked),
    Scenario("store locked at commit: recovery file", store_locked_at_commit),
    Scenario("crash after send, next worker recovers", crash_after_send),
    Scenario("asyncio keeper", async_keeper),
    Scenario("grant events and the signed webhook", events_and_webhook),
    Scenario("export and import of encrypted bundles", export_and_import),
    Scenario("CLI commands at every verbosity", cli_commands),
    Scenario("application logs through the redaction helpers", app_logging_through_the_filters),
    Scenario("PostgreSQL store", postgres_store, postgres=True),
]


# --- the check ---------------------------------------------------------------------------------------------------


def fragments(canaries: set[str]) -> set[str]:
    return {c[i : i + FRAGMENT] for c in canaries for i in range(len(c) - FRAGMENT + 1)}


def find_leaks(captures: list[tuple[str, str]], canaries: set[str]) -> list[str]:
    grams = fragments(canaries)
    leaks = []
    for name, text in captures:
        hit = next((text[i : i + FRAGMENT] for i in range(len(text) - FRAGMENT + 1)
                    if text[i : i + FRAGMENT] in grams), None)  # fmt: skip
        if hit is not None:
            leaks.append(f"{name}: contains {hit[:3]}... (a canary fragment)")
    return leaks


TOTALS = {"scenarios": 0, "captures": 0, "bytes": 0}


@pytest.fixture
def world(tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[World]:
    caplog.set_level(logging.DEBUG)  # every logger: grantkeeper, httpx, httpcore, psycopg
    sim = CanarySimulator(client_secret=f"{CANARY_MARK}-client-secret-{secrets.token_urlsafe(16)}",
                          auth_methods=("client_secret_basic", "client_secret_post"))  # fmt: skip
    sim.start()
    w = World(tmp_path, sim, f"sqlite://{tmp_path}/s.db")
    w.pg_url = lambda: request.getfixturevalue("pg_url")  # type: ignore[attr-defined]
    saved = {k: os.environ.get(k) for k in ("GRANTKEEPER_KEY", "GRANTKEEPER_RECOVERY_DIR")}
    try:
        yield w
    finally:
        sim.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _file_captures(directory: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(directory)), path.read_bytes()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_no_canary_escapes(scenario: Scenario, world: World, caplog: pytest.LogCaptureFixture) -> None:
    """No canary token or client secret, nor any 8-character fragment of one, appears in anything captured."""
    scenario.run(world)
    if scenario.run is success:  # the capture really includes the HTTP libraries' DEBUG output
        assert {"httpx", "httpcore"} <= {r.name.split(".")[0] for r in caplog.records}
    world.capture("log records (DEBUG, all loggers)", caplog.text)
    world.capture("log record arguments", [(r.name, r.args) for r in caplog.records])
    for name, data in _file_captures(world.tmp_path):
        world.capture(f"file {name}", data)
    canaries = world.canaries()
    assert len(canaries) >= 2 and all(CANARY_MARK in c for c in canaries)
    assert world.captures
    leaks = find_leaks(world.captures, canaries)
    TOTALS["scenarios"] += 1
    TOTALS["captures"] += len(world.captures)
    TOTALS["bytes"] += sum(len(text) for _, text in world.captures)
    assert leaks == []


def test_the_detector_finds_a_fragment() -> None:
    """The check itself: a 8-character cut of a canary in any capture is reported; 7 characters are not."""
    canary = f"{CANARY_MARK}-abcdefghijklmnop"
    assert find_leaks([("log", f"xx {canary[5:13]} yy")], {canary}) != []
    assert find_leaks([("log", f"xx {canary[5:12]} yy")], {canary}) == []
    assert find_leaks([("log", "nothing here")], {canary}) == []


def test_the_suite_sees_the_one_command_it_excludes(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Control: capturing `grantkeeper token` (the excluded command) in the same way is reported as a leak, so
    the captures and the canaries really meet."""
    success(world)
    result = CliRunner().invoke(cli, ["--store", world.url, "token", "g"])
    assert result.exit_code == 0
    world.capture("grantkeeper token: stdout", result.stdout)
    assert [leak.split(":")[0] for leak in find_leaks(world.captures, world.canaries())] == ["grantkeeper token"]


def test_report_counts() -> None:
    """Prints what the suite covered in this run (read by the README's closing note); runs last in this file."""
    if TOTALS["scenarios"]:
        print(f"\ncanary suite: {TOTALS['scenarios']} scenarios, {TOTALS['captures']} captures, "
              f"{TOTALS['bytes']} bytes scanned")  # fmt: skip
    assert TOTALS["scenarios"] in (0, *range(1, len(SCENARIOS) + 1))
