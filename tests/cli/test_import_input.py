"""What `grant import` (and `Keeper.import_grant`) accept: one refresh token, or a provider's whole JSON token
response; anything else is refused with its shape (never its value) and nothing is stored. And when an imported
token is refused on its first use, `doctor` says it was never accepted instead of calling it a revocation.

Real pieces: the provider simulator over loopback HTTP issues the tokens and token responses, the CLI runs as
``python -m grantkeeper`` (or in-process), the store is an SQLite file. CliWorld checks every output for every
token it has seen."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from grantkeeper import AsyncKeeper, GrantkeeperError, Keeper, RevokedOrExpired
from grantkeeper._exceptions import TokenInputError
from grantkeeper.stores import open_store
from grantkeeper.tokens.token_input import read_token_input
from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.helpers import FAST_POLICY, add_grant, provider_for

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py


def _token_response(world: CliWorld) -> dict[str, object]:
    """A real token response: the simulator's answer to a refresh of a fresh grant."""
    sim = world.sim
    first = sim.issue_grant()  # type: ignore[attr-defined]
    reply = httpx.post(sim.url, data={"grant_type": "refresh_token", "refresh_token": first},  # type: ignore[attr-defined]
                       auth=(sim.client_id, sim.client_secret))  # type: ignore[attr-defined]  # fmt: skip
    assert reply.status_code == 200, reply.text
    data: dict[str, object] = reply.json()
    world.watch(str(data["refresh_token"]))
    world.watch(str(data["access_token"]), printable=True)
    return data


def _stored(world: CliWorld, name: str = GRANT) -> tuple[str | None, str | None]:
    """(refresh token, access token) the store holds for grant `name`, read with the library."""
    store = open_store(world.url, create=False)
    try:
        grant = store.get_grant(name)
    finally:
        store.close()
    return (grant.refresh_token.reveal() if grant.refresh_token else None,
            grant.access_token.reveal() if grant.access_token else None)  # fmt: skip


def _names(world: CliWorld) -> list[str]:
    return [g["name"] for g in json.loads(world.run("grant", "list", "--json").stdout)]


class TestTokenResponse:
    def test_pretty_printed_response_on_a_pipe_stores_its_tokens(self, world: CliWorld) -> None:
        """The issue's case: `grant import g < token.json` with a pretty-printed response stored `{` as the
        refresh token. Now its refresh token, access token and scope are stored, and the first `token` serves
        the imported access token without a refresh."""
        world.add_provider()
        response = _token_response(world)
        calls = world.sim.stats.refresh_calls  # type: ignore[attr-defined]
        out = world.run("grant", "import", GRANT, "--provider", "sim", stdin=json.dumps(response, indent=2) + "\n")
        assert out.code == 0, out.stderr
        assert _stored(world) == (response["refresh_token"], response["access_token"])
        printed = world.run("token", GRANT, token=True)
        assert printed.stdout == f"{response['access_token']}\n"
        assert world.sim.stats.refresh_calls == calls  # type: ignore[attr-defined]
        status = json.loads(world.run("status", GRANT, "--json").stdout)
        assert status["scopes"] == str(response["scope"]).split()

    def test_one_line_response_in_a_file_stores_its_refresh_token(self, world: CliWorld, tmp_path: Path) -> None:
        """One-line JSON read from a regular file (`< token.json`): the refresh token is the response's, and the
        grant refreshes with it."""
        world.add_provider()
        response = _token_response(world)
        saved = tmp_path / "token.json"
        saved.write_text(json.dumps(response) + "\n")
        with saved.open() as stdin:
            proc = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", world.url, "grant", "import",
                                   GRANT, "--provider", "sim"], stdin=stdin, capture_output=True, text=True,
                                  timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert str(response["refresh_token"]) not in proc.stdout + proc.stderr
        assert _stored(world)[0] == response["refresh_token"]
        assert world.run("refresh", GRANT, "--force").code == 0

    def test_a_saved_response_counts_its_lifetime_from_the_file_time(self, world: CliWorld, tmp_path: Path) -> None:
        """`expires_in` counts from when the response was saved (the file's modification time): a response saved
        two hours ago with a one-hour access token keeps its refresh token but not its expired access token, so
        the first `token` refreshes instead of serving a dead token."""
        world.add_provider()
        response = _token_response(world)
        saved = tmp_path / "old-token.json"
        saved.write_text(json.dumps({**response, "expires_in": 3600}, indent=2))
        two_hours_ago = time.time() - 7200
        os.utime(saved, (two_hours_ago, two_hours_ago))
        with saved.open() as stdin:
            proc = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", world.url, "grant", "import",
                                   GRANT, "--provider", "sim"], stdin=stdin, capture_output=True, text=True,
                                  timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert _stored(world) == (response["refresh_token"], None)
        calls = world.sim.stats.refresh_calls  # type: ignore[attr-defined]
        assert world.run("token", GRANT, token=True).code == 0
        assert world.sim.stats.refresh_calls == calls + 1  # type: ignore[attr-defined]

    def test_response_without_refresh_token_is_refused(self, world: CliWorld) -> None:
        """A token response with no refresh token cannot make a grant: refused, naming the fields it has."""
        world.add_provider()
        response = _token_response(world)
        del response["refresh_token"]
        out = world.run("grant", "import", GRANT, "--provider", "sim", stdin=json.dumps(response, indent=2))
        assert out.code == 3
        assert out.stderr.startswith("grantkeeper: error[token_input]: the JSON token response has no refresh_token")
        assert "access_token" in out.stderr
        assert _names(world) == []


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("{\n", "not valid JSON"),
        ("Bearer {token}\n", "2 words separated by spaces, the first is 'Bearer'"),
        ('"{token}"\n', "wrapped in double quotes"),
        ("{token}\x1b[0m\n", "a control character (0x1b)"),
        ("{token}\n{token}2\n", "2 non-empty lines"),
        ("[1, 2]\n", "JSON"),
    ],
    ids=["brace", "bearer", "quoted", "escape", "two-lines", "json-array"],
)
def test_anything_but_one_token_is_refused_with_its_shape(world: CliWorld, tmp_path: Path, text: str,
                                                           shape: str) -> None:  # fmt: skip
    """Each of these was stored before and killed the grant at its first refresh. Now: exit 3,
    error[token_input], the shape in the message, no fragment of the token, nothing stored. Read from a regular
    file so that a second line is seen too."""
    world.add_provider()
    token = world.sim.issue_grant()  # type: ignore[attr-defined]
    world.watch(token)
    saved = tmp_path / "input.txt"
    saved.write_text(text.replace("{token}", token))
    with saved.open() as stdin:
        proc = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", world.url, "grant", "import", GRANT,
                               "--provider", "sim"], stdin=stdin, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("grantkeeper: error[token_input]: "), proc.stderr
    assert shape in proc.stderr
    assert "Nothing was stored" in proc.stderr
    assert all(token[i : i + 8] not in proc.stderr + proc.stdout for i in range(len(token) - 7))
    assert _names(world) == []


class TestLibrary:
    def test_import_grant_refuses_what_is_not_one_token(self, make_sim: object, tmp_path: Path) -> None:
        """The Python API checks the same way (a ConfigurationError subclass without the value); a refused
        re-import leaves the stored grant exactly as it was."""
        sim = make_sim()  # type: ignore[operator]
        with Keeper.open(f"sqlite:///{tmp_path}/api.db") as keeper:
            good = add_grant(keeper, sim)
            before = keeper.store.get_grant("g")
            for bad in (f"Bearer {good}", "{", f"{good}\n{good}", f'"{good}"', f"{good}\x00", ""):
                with pytest.raises(TokenInputError) as caught:
                    keeper.import_grant("g", provider="sim", refresh_token=bad)
                assert good[:8] not in caught.value.message
                assert caught.value.exit_code == 3
            assert keeper.store.get_grant("g") == before
            with pytest.raises(TokenInputError):
                keeper.import_grant("new", provider="sim", refresh_token="a b")
            assert [g.name for g in keeper.grants()] == ["g"]

    @pytest.mark.anyio
    async def test_async_import_grant_checks_the_same_way(self, make_sim: object, tmp_path: Path) -> None:
        """AsyncKeeper.import_grant refuses the same input; its access token argument is checked too, and a
        good token response read with read_token_input is stored whole."""
        sim = make_sim()  # type: ignore[operator]
        good = sim.issue_grant()  # type: ignore[attr-defined]

        async with await AsyncKeeper.open(f"sqlite:///{tmp_path}/async.db") as keeper:
            await keeper.add_provider(provider_for(sim))
            with pytest.raises(TokenInputError):
                await keeper.import_grant("g", provider="sim", refresh_token=f"Bearer {good}")
            with pytest.raises(TokenInputError):
                await keeper.import_grant("g", provider="sim", refresh_token=good, access_token="a b",
                                          expires_at=time.time() + 60)  # fmt: skip
            given = read_token_input(json.dumps({"refresh_token": good, "access_token": "at-1",
                                                 "expires_in": 600}), issued_at=time.time())  # fmt: skip
            grant = await keeper.import_grant(
                "g",
                provider="sim",
                refresh_token=given.refresh_token,
                access_token=given.access_token,
                expires_at=given.expires_at,
            )
            result = grant.refresh_token.reveal() if grant.refresh_token else None, await keeper.access_token("g")

        assert result == (good, "at-1")
        assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]


class TestNeverAccepted:
    def test_doctor_says_an_imported_token_was_never_accepted(self, make_sim: object, tmp_path: Path) -> None:
        """A well-formed token the provider never issued (another client's, an access token...) is refused at
        the first refresh. The grant needs re-authorization, but doctor does not call it a revocation: it says
        the imported token was never accepted and to check what was imported."""
        sim = make_sim()  # type: ignore[operator]
        with Keeper.open(f"sqlite:///{tmp_path}/api.db", policy=FAST_POLICY) as keeper:
            add_grant(keeper, sim)
            keeper.import_grant("wrong", provider="sim", refresh_token=secrets.token_urlsafe(32))
            with pytest.raises(RevokedOrExpired):
                keeper.access_token("wrong")
            diagnosis = keeper.doctor("wrong")
        assert diagnosis.cause == "never_accepted"
        assert "the imported token was never accepted" in diagnosis.summary
        assert "revocation" not in diagnosis.summary.replace("not a revocation", "")
        assert diagnosis.next_step.startswith("check what was imported")
        assert diagnosis.evidence["attempts_with_token"] == 1

    def test_a_token_that_worked_and_was_then_revoked_is_still_a_revocation(self, make_sim: object,
                                                                            tmp_path: Path) -> None:  # fmt: skip
        """The contrast: an imported token the provider accepted once (a refresh committed), revoked later, stays
        revoked_or_expired. So does an imported token revoked before its first use, on a provider whose
        rotation is never: only the rule's evidence decides, not the word 'imported'."""
        sim = make_sim()  # type: ignore[operator]
        with Keeper.open(f"sqlite:///{tmp_path}/api.db", policy=FAST_POLICY) as keeper:
            add_grant(keeper, sim)
            keeper.refresh("g", force=True)
            sim.revoke_family(keeper.store.get_grant("g").refresh_token.reveal())  # type: ignore[attr-defined,union-attr]
            with pytest.raises(RevokedOrExpired):
                keeper.refresh("g", force=True)
            assert keeper.doctor("g").cause == "revoked_or_expired"

    def test_cli_doctor_names_the_cause_and_exits_12(self, world: CliWorld) -> None:
        """Through the command line: import, `token` fails with exit 5, `doctor` prints never_accepted."""
        world.add_provider()
        made_up = secrets.token_urlsafe(32)
        world.watch(made_up)
        assert world.run("grant", "import", GRANT, "--provider", "sim", stdin=made_up + "\n").code == 0
        assert world.run("token", GRANT).code == 5
        out = world.run("doctor", GRANT)
        assert out.code == 12
        assert out.stdout.startswith(f"{GRANT}: never_accepted\n")
        assert "check what was imported" in out.stdout
        assert json.loads(world.run("doctor", GRANT, "--json").stdout)["cause"] == "never_accepted"


def test_message_never_holds_the_value() -> None:
    """Unit check of the reader: every refusal describes, none quotes (a 40-character marker never appears)."""
    marker = "Zq" * 20
    for text in (f"Bearer {marker}", f"{{{marker}", f"{marker}\n{marker}", f"{marker}é", f'"{marker}"',
                 json.dumps({"refresh_token": f"x {marker}"}), json.dumps({"access_token": marker}),
                 json.dumps({"refresh_token": marker, "access_token": marker, "expires_in": "soon"})):  # fmt: skip
        with pytest.raises(GrantkeeperError) as caught:
            read_token_input(text, issued_at=0.0)
        assert "Zq" not in caught.value.message, caught.value.message
