"""Encrypted bundles (grantkeeper.bundle and the export/import commands): round trips between SQLite and
PostgreSQL stores with a refresh afterwards, and every way a bundle can fail to open, with nothing imported."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper import EncryptionKeyError, Keeper
from grantkeeper._exceptions import SpentRefreshToken
from grantkeeper._secrets import Secret
from grantkeeper.bundle import (
    MAGIC,
    BundleAuthError,
    BundleConflict,
    BundleError,
    BundleKey,
    export_bundle,
    import_bundle,
    read_header,
)
from grantkeeper.cli.main import cli
from grantkeeper.keys.sources import encode_key, generate_key
from grantkeeper.stores import open_store
from grantkeeper.testing.simulator import ProviderSimulator
from tests.cli.test_grant_commands import on_a_terminal
from tests.helpers import FAST_POLICY, add_grant, provider_for, resource_ok
from tests.system.test_canary import fragments

PASSPHRASE = "correct horse battery staple"
FAST_N = 2**14  # the smallest work factor a bundle may name; the CLI writes 2**17


def _key(passphrase: str = PASSPHRASE) -> BundleKey:
    return BundleKey.passphrase(Secret(passphrase))


@pytest.fixture
def sim(make_sim: Callable[..., object]) -> ProviderSimulator:
    return make_sim(access_ttl=3600.0)  # type: ignore[return-value]


@pytest.fixture
def source(tmp_path: Path, sim: ProviderSimulator) -> str:
    """An SQLite store with provider "sim" and two grants, "g" refreshed once (generation 2)."""
    url = f"sqlite://{tmp_path}/source.db"
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.import_grant("h", provider="sim", refresh_token=sim.issue_grant(), scopes=("read",))
        keeper.refresh("g", force=True)
    return url


def _export(url: str, key: BundleKey | None = None, **options: object) -> bytes:
    with Keeper.open(url, create=False) as keeper:
        return export_bundle(keeper.store, key or _key(), now=keeper.clock.now(), scrypt_n=FAST_N, **options)  # type: ignore[arg-type]


def _import(url: str, data: bytes, key: BundleKey | None = None, *, replace: bool = False) -> object:
    with Keeper.open(url) as keeper:
        return import_bundle(keeper.store, data, key or _key(), replace=replace, now=keeper.clock.now())


def _reseal(data: bytes, key: BundleKey, change: Callable[[dict[str, Any]], object]) -> bytes:
    """`data` with its decrypted payload changed by `change`, encrypted again under `key` as export does: a
    bundle that is authentic (it opens) but holds what `change` put there."""
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC) : end])
    raw = data[: end + 1]
    salt, nonce = (base64.urlsafe_b64decode(header[k] + "=" * (-len(header[k]) % 4)) for k in ("salt", "nonce"))
    aead = AESGCM(key.derive(header["kdf"], salt))
    payload = json.loads(aead.decrypt(nonce, data[end + 1 :], raw))
    change(payload)
    body = json.dumps(payload).encode()
    header["length"] = len(body) + 16
    raw = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
    return raw + aead.encrypt(nonce, body, raw)


def _grant_names(url: str) -> list[str]:
    store = open_store(url)
    try:
        return [g.name for g in store.list_grants()]
    finally:
        store.close()


def _no_secret_in(data: bytes, sim: ProviderSimulator) -> None:
    text = data.decode("latin-1")
    grams = fragments(set(sim.issued_tokens()) | {sim.client_secret})
    assert not [text[i : i + 8] for i in range(len(text) - 7) if text[i : i + 8] in grams]


class TestRoundTrip:
    def test_to_sqlite_and_postgres_then_refresh(
        self, shared_store_url: str, source: str, sim: ProviderSimulator
    ) -> None:
        """Everything arrives (provider with its secret, tokens, scopes, generation, lifetimes) and refreshes.

        The target fixture comes first: a PostgreSQL target sets $GRANTKEEPER_KEY, which the source then uses."""
        data = _export(source)
        _no_secret_in(data, sim)
        report = _import(shared_store_url, data)
        assert report.grants == ("g", "h") and report.providers_added == ("sim",)  # type: ignore[attr-defined]
        src, dst = open_store(source), open_store(shared_store_url)
        try:
            for name in ("g", "h"):
                before, after = src.get_grant(name), dst.get_grant(name)
                assert after.refresh_token == before.refresh_token
                assert after.scopes == before.scopes and after.generation >= before.generation
                assert (after.created_at, after.refreshed_at, after.refresh_expires_at) == (
                    before.created_at, before.refreshed_at, before.refresh_expires_at,
                )  # fmt: skip
                assert after.access_token is None
            assert dst.get_provider("sim").client_secret == Secret(sim.client_secret)
        finally:
            src.close()
            dst.close()
        with Keeper.open(shared_store_url, policy=FAST_POLICY) as keeper:
            generation = keeper.store.get_grant("g").generation
            assert resource_ok(sim, keeper.access_token("g"))
            assert keeper.store.get_grant("g").generation == generation + 1

    def test_key_file_and_one_grant(self, source: str, sqlite_url: str, tmp_path: Path) -> None:
        path = tmp_path / "bundle.key"
        path.write_text(encode_key(generate_key()) + "\n")
        path.chmod(0o600)
        data = _export(source, BundleKey.key_file(path), grants=["h"])
        assert [name for name, _ in read_header(data).grants] == ["h"]
        assert _import(sqlite_url, data, BundleKey.key_file(path)).grants == ("h",)  # type: ignore[attr-defined]
        assert _grant_names(sqlite_url) == ["h"]

    def test_header_lists_names_and_fingerprints_only(self, source: str) -> None:
        data = _export(source)
        header = read_header(data)
        store = open_store(source)
        try:
            assert header.grants == tuple((g.name, g.refresh_fp) for g in store.list_grants())
        finally:
            store.close()
        plain = json.loads(data[len(MAGIC) : data.index(b"\n", len(MAGIC))])
        assert set(plain) == {"format", "protection", "kdf", "salt", "nonce", "length", "grants"}
        assert plain["kdf"] == {"name": "scrypt", "n": FAST_N, "r": 8, "p": 1}


class TestNothingImported:
    def _refused(self, url: str, data: bytes, key: BundleKey | None = None) -> BundleError:
        with pytest.raises(BundleError) as caught:
            _import(url, data, key)
        assert _grant_names(url) == []
        return caught.value

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("created_at", "yesterday"), ("refreshed_at", -5), ("refresh_issued_at", 1e300),
            ("refresh_expires_at", True), ("generation", 0), ("generation", "2"), ("generation", 2**60),
            ("scopes", "read write"), ("scopes", [1, 2]),
        ],
    )  # fmt: skip
    def test_values_out_of_range_inside_an_authentic_bundle(self, source: str, sqlite_url: str, tmp_path: Path,
                                                            field: str, value: object) -> None:  # fmt: skip
        """A bundle that opens with the right key but carries a value no store could hold (text for a time, a
        negative or far-future time, a generation of 0, scopes as one string) is damage: refused, nothing
        imported, instead of a column every later read would choke on."""
        path = tmp_path / "k"
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
        key = BundleKey.key_file(path)
        data = _reseal(_export(source, key), key, lambda payload: payload["grants"][0].__setitem__(field, value))
        error = self._refused(sqlite_url, data, key)
        assert "damaged" in error.message
        assert _import(sqlite_url, _reseal(_export(source, key), key, lambda _payload: None), key) is not None

    def test_wrong_passphrase(self, source: str, sqlite_url: str) -> None:
        error = self._refused(sqlite_url, _export(source), _key("not the passphrase"))
        assert isinstance(error, BundleAuthError) and "wrong passphrase or key" in error.message

    def test_wrong_key_file_and_wrong_kind(self, source: str, sqlite_url: str, tmp_path: Path) -> None:
        path = tmp_path / "k"
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
        assert isinstance(self._refused(sqlite_url, _export(source, BundleKey.key_file(path)), _key()),
                          BundleAuthError)  # fmt: skip
        other = tmp_path / "other"
        other.write_bytes(os.urandom(32))
        other.chmod(0o600)
        data = _export(source, BundleKey.key_file(path))
        assert isinstance(self._refused(sqlite_url, data, BundleKey.key_file(other)), BundleAuthError)

    def test_key_file_readable_by_others_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "k"
        path.write_bytes(os.urandom(32))
        path.chmod(0o644)
        with pytest.raises(EncryptionKeyError, match="chmod 600"):
            BundleKey.key_file(path)

    def test_one_changed_byte_anywhere(self, source: str, sqlite_url: str) -> None:
        data = _export(source)
        header_end = data.index(b"\n", len(MAGIC)) + 1
        for position in (
            0,
            len(MAGIC) + 3,
            header_end - 5,
            header_end,
            len(data) // 2 + header_end // 2,
            len(data) - 1,
        ):
            changed = bytearray(data)
            changed[position] ^= 0x01
            self._refused(sqlite_url, bytes(changed))

    def test_truncated(self, source: str, sqlite_url: str) -> None:
        data = _export(source)
        header_end = data.index(b"\n", len(MAGIC)) + 1
        for length in (5, len(MAGIC) + 10, header_end, header_end + 20, len(data) - 1):
            error = self._refused(sqlite_url, data[:length])
            assert "truncated" in error.message or "not a grantkeeper bundle" in error.message

    def test_unknown_version(self, source: str, sqlite_url: str) -> None:
        data = _export(source)
        error = self._refused(sqlite_url, data.replace(b'"format": 1', b'"format": 2', 1))
        assert "format 2 is not supported" in error.message

    def test_existing_grant_without_replace(self, source: str, sim: ProviderSimulator, sqlite_url: str) -> None:
        """A conflict on one grant imports none of them; --replace replaces it and keeps generations going up."""
        data = _export(source)
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            add_grant(keeper, sim, grant="h")
            for _ in range(3):
                keeper.refresh("h", force=True)
            local = keeper.store.get_grant("h").generation
        with pytest.raises(BundleConflict, match="--replace"):
            _import(sqlite_url, data)
        assert _grant_names(sqlite_url) == ["h"]
        report = _import(sqlite_url, data, replace=True)
        assert report.replaced == ("h",)  # type: ignore[attr-defined]
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert keeper.store.get_grant("h").generation > local
            assert resource_ok(sim, keeper.access_token("h"))

    def test_replace_refuses_a_token_this_store_has_spent(self, source: str, sim: ProviderSimulator) -> None:
        """The bundle was taken, then the store refreshed: the bundle's token is spent here. --replace refuses the
        whole bundle (nothing written, no secret in the message), and the store's current token still works."""
        data = _export(source)
        with Keeper.open(source, policy=FAST_POLICY) as keeper:
            keeper.refresh("g", force=True)
            before = {g.name: (g.generation, g.refresh_fp) for g in keeper.store.list_grants()}
        with pytest.raises(SpentRefreshToken) as refused:
            _import(source, data, replace=True)
        error = refused.value
        assert (
            error.code == "spent_refresh_token"
            and "grant 'g'" in error.message
            and "Nothing was stored" in error.message
        )
        assert not [f for f in fragments(set(sim.issued_tokens())) if f in error.message]
        with Keeper.open(source, policy=FAST_POLICY) as keeper:
            assert {g.name: (g.generation, g.refresh_fp) for g in keeper.store.list_grants()} == before
            keeper.refresh("g", force=True)  # the current token still refreshes: nothing was replaced
            assert resource_ok(sim, keeper.access_token("g"))


class TestProviders:
    def test_an_existing_provider_is_kept_and_a_difference_reported(
        self, source: str, sqlite_url: str, make_sim: Callable[..., object]
    ) -> None:
        other = make_sim()
        with Keeper.open(sqlite_url) as keeper:
            keeper.add_provider(provider_for(other))
        report = _import(sqlite_url, _export(source))
        assert report.providers_kept == report.providers_differing == ("sim",)  # type: ignore[attr-defined]
        store = open_store(sqlite_url)
        try:
            assert store.get_provider("sim").token_url == other.url  # type: ignore[attr-defined]
        finally:
            store.close()


class TestCommands:
    """`grantkeeper export` / `import` in-process: no prompt without a terminal, no secret in any output."""

    def _run(self, url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, ["--store", url, *args], input=stdin)
        return result.exit_code, result.stdout, result.stderr

    def test_export_list_import_refresh(
        self, source: str, sqlite_url: str, tmp_path: Path, sim: ProviderSimulator
    ) -> None:
        bundle = tmp_path / "grants.gkb"
        outputs = []
        code, out, err = self._run(source, "export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        outputs += [out, err]
        assert code == 0, err
        assert "exported 2 grant(s)" in out and "spends the same refresh token twice" in err
        assert bundle.stat().st_mode & 0o777 == 0o600
        code, out, err = self._run(sqlite_url, "import", str(bundle), "--list")
        outputs += [out, err]
        assert code == 0, err
        assert "passphrase-protected, 2 grant(s)" in out and "fp_" in out
        listed = json.loads(self._run(sqlite_url, "import", str(bundle), "--list", "--json")[1])
        assert [g["name"] for g in listed["grants"]] == ["g", "h"]
        code, out, err = self._run(sqlite_url, "import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        outputs += [out, err]
        assert code == 0, err
        assert "grant g imported" in out and "provider sim added" in out
        assert "warning" in err and "spends the same refresh token twice" in err
        code, out, err = self._run(sqlite_url, "import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        outputs += [out, err]
        assert code == 3 and "error[bundle_conflict]" in err and "--replace" in err
        code, out, err = self._run(sqlite_url, "refresh", "g", "--force")
        assert code == 0, err
        _no_secret_in("".join(outputs).encode() + bundle.read_bytes(), sim)

    def test_wrong_passphrase_exit_3_and_no_prompt(self, source: str, sqlite_url: str, tmp_path: Path) -> None:
        bundle = tmp_path / "b"
        assert self._run(source, "export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")[0] == 0
        code, _, err = self._run(sqlite_url, "import", str(bundle), "--passphrase-stdin", stdin="wrong passphrase\n")
        assert code == 3 and "error[bundle_auth]" in err and "Passphrase" not in err
        assert not Path(sqlite_url.removeprefix("sqlite://")).exists()  # not even an empty store was created

    def test_export_on_a_terminal_asks_for_the_passphrase_twice(
        self, source: str, sqlite_url: str, tmp_path: Path, sim: ProviderSimulator
    ) -> None:
        bundle = tmp_path / "b"
        status, screen = on_a_terminal(
            "--store", source, "export", str(bundle), "--passphrase-stdin",
            script=[("Bundle passphrase: ", PASSPHRASE + "\n"), ("Repeat for confirmation: ", PASSPHRASE + "\n")],
        )  # fmt: skip
        assert status == 0, screen
        assert PASSPHRASE not in screen  # hidden input: not echoed
        _no_secret_in(screen.encode(), sim)
        code, _, err = self._run(sqlite_url, "import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        assert code == 0, err

    def test_needs_a_key_choice_and_a_new_file(self, source: str, tmp_path: Path) -> None:
        bundle = tmp_path / "b"
        assert self._run(source, "export", str(bundle))[0] == 2
        assert not bundle.exists()
        bundle.write_bytes(b"keep me")
        code, _, err = self._run(source, "export", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        assert code == 3 and "already exists" in err and bundle.read_bytes() == b"keep me"
        code, _, err = self._run(source, "export", str(tmp_path / "c"), "--passphrase-stdin", stdin="short\n")
        assert code == 3 and "at least 8 characters" in err
