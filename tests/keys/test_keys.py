"""Key ring and key rotation: key sources, key ids in ciphertexts, `grantkeeper keys`, resumable re-encryption
that keeps fingerprints and never loses a token, and owner-only files (I6, I7)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper import Keeper, Secret
from grantkeeper._exceptions import EncryptionKeyError, StoreFormatError
from grantkeeper.cli.main import cli
from grantkeeper.keys.crypto import Crypto, _derive
from grantkeeper.keys.rekey import FORMAT_1, KEY_CHECK_AAD, census, rotate
from grantkeeper.keys.sources import KEY_COMMAND_ENV, KEY_ENV, KeySource, encode_key, load_ring, parse_ring
from grantkeeper.stores import GrantUpdate, SQLStore, open_store
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, add_grant

Sim = Callable[..., object]
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
AAD = "grantkeeper/grants/g/refresh_token"


def format_1_blob(key: bytes, data: bytes, aad: str) -> bytes:
    """A ciphertext as grantkeeper wrote it before key ids: 0x01 | nonce | AES-GCM(data, aad)."""
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(_derive(key, b"encryption")).encrypt(nonce, data, aad.encode())


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, standalone_mode=False)
    return int(result.return_value or 0), result.stdout, result.stderr


def world(tmp_path: Path, sim: object) -> tuple[str, dict[str, object]]:
    """An SQLite store with a provider, a refreshed grant and a second grant; returns what must survive."""
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g")
        add_grant(keeper, sim, grant="h")
    return url, snapshot(url)


def snapshot(url: str) -> dict[str, object]:
    store = open_store(url, create=False)
    try:
        grants = {g.name: g for g in store.list_grants()}
        return {
            "tokens": {n: (g.refresh_token, g.access_token) for n, g in grants.items()},
            "fps": {n: (g.refresh_fp, g.access_fp) for n, g in grants.items()},
            "fresh_fp": store.fingerprint(Secret("a token first seen after the rotation")),
            "client_secret": store.get_provider("sim").client_secret,
        }
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store that outlives its process (the memory store has no key to rotate), keyed by $GRANTKEEPER_KEY."""
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/env.db"
    url: str = request.getfixturevalue("pg_url")
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    open_store(url, migrate=True).close()
    return url


def key_file_ids(path: Path) -> list[str]:
    return [Crypto(k).key_id for k in parse_ring(path.read_text(), origin="test")]


# --- key sources ---------------------------------------------------------------------------------------


class TestKeySources:
    def test_ring_text_lists_keys_primary_first_without_duplicates(self) -> None:
        """Commas, spaces and newlines separate keys; the first is primary; repeats are dropped."""
        text = f"{encode_key(KEY_B)}, {encode_key(KEY_A)}\n{encode_key(KEY_B)}\n"
        assert parse_ring(text, origin="$X") == [KEY_B, KEY_A]

    def test_bad_second_key_error_names_its_position_not_its_text(self) -> None:
        """A broken key in a ring is reported by position; the good key's text never appears."""
        with pytest.raises(EncryptionKeyError, match=r"\$X \(key 2\)") as info:
            parse_ring(f"{encode_key(KEY_A)},not-a-key", origin="$X")
        assert encode_key(KEY_A) not in str(info.value)

    def test_empty_ring_is_an_error(self) -> None:
        with pytest.raises(EncryptionKeyError, match="holds no key"):
            parse_ring(" , \n", origin="$X")

    def test_key_command_output_is_the_ring(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """$GRANTKEEPER_KEY_COMMAND runs without a shell; its stdout is the ring; the key file is not used."""
        script = tmp_path / "kms.py"
        script.write_text(f"print({encode_key(KEY_B)!r} + ',' + {encode_key(KEY_A)!r})\n")
        monkeypatch.setenv(KEY_COMMAND_ENV, f"{sys.executable} {script}")
        keys, source = load_ring(tmp_path / "absent.key", create=True)
        assert keys == [KEY_B, KEY_A]
        assert source.command is not None
        assert not (tmp_path / "absent.key").exists()

    def test_env_key_wins_over_the_command(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv(KEY_ENV, encode_key(KEY_A))
        monkeypatch.setenv(KEY_COMMAND_ENV, "/nonexistent/kms")
        assert load_ring(None, create=False)[0] == [KEY_A]

    @pytest.mark.parametrize(
        ("command", "message"),
        [
            ("/nonexistent/kms-tool", "was not found"),
            (f"{sys.executable} -c 'import sys; print(\"oops-key-text\", file=sys.stderr); sys.exit(3)'",
             "exited with status 3"),
            (f"{sys.executable} -c 'print(\"short\")'", "not 32 bytes"),
            ("'unbalanced", "cannot be split"),
        ],
    )  # fmt: skip
    def test_failing_key_command_is_a_key_error(
        self, monkeypatch: pytest.MonkeyPatch, command: str, message: str
    ) -> None:
        """A command that is missing, fails or prints no key gives EncryptionKeyError; its stderr is not shown."""
        monkeypatch.setenv(KEY_COMMAND_ENV, command)
        with pytest.raises(EncryptionKeyError, match=message) as info:
            load_ring(None, create=False)
        assert "oops-key-text" not in str(info.value)

    def test_postgres_without_any_key_source_says_how_to_fix(self) -> None:
        with pytest.raises(EncryptionKeyError, match=f"{KEY_ENV}.*{KEY_COMMAND_ENV}"):
            load_ring(None, create=False)

    def test_group_readable_key_file_is_refused_with_the_fix(self, tmp_path: Path) -> None:
        path = tmp_path / "s.key"
        path.write_text(encode_key(KEY_A))
        path.chmod(0o640)
        with pytest.raises(EncryptionKeyError, match=f"chmod 600 {path}"):
            load_ring(path, create=False)


# --- ciphertexts with key ids ------------------------------------------------------------------------------


class TestRingCrypto:
    def test_new_ciphertexts_name_the_primary_key(self) -> None:
        crypto = Crypto([KEY_B, KEY_A])
        blob = crypto.encrypt(Secret("value"), aad=AAD)
        assert crypto.key_id_of(blob) == Crypto(KEY_B).key_id == crypto.key_id
        assert crypto.is_current(blob)

    def test_older_key_in_the_ring_still_decrypts(self) -> None:
        blob = Crypto(KEY_A).encrypt(Secret("value"), aad=AAD)
        ring = Crypto([KEY_B, KEY_A])
        assert ring.decrypt(blob, aad=AAD).reveal() == "value"
        assert not ring.is_current(blob)
        assert ring.is_current(ring.reencrypt(blob, aad=AAD))

    def test_format_1_values_decrypt_with_any_key_of_the_ring(self) -> None:
        """Values written before key ids (version byte 0x01) keep working, whichever position their key has."""
        blob = format_1_blob(KEY_A, b"legacy", AAD)
        ring = Crypto([KEY_B, KEY_A])
        assert ring.decrypt_bytes(blob, aad=AAD) == b"legacy"
        assert ring.key_id_of(blob) is None
        assert not ring.is_current(blob)

    def test_missing_key_is_named_by_id(self) -> None:
        """A value whose key left the ring says which key id to add back; no key or value text."""
        blob = Crypto(KEY_A).encrypt(Secret("value"), aad=AAD)
        with pytest.raises(StoreFormatError, match=Crypto(KEY_A).key_id) as info:
            Crypto(KEY_B).decrypt(blob, aad=AAD)
        assert "add that key back" in str(info.value)
        assert encode_key(KEY_A) not in str(info.value)

    def test_key_id_is_authenticated(self) -> None:
        """Relabelling a value with another key id of the ring fails authentication."""
        ring = Crypto([KEY_B, KEY_A])
        blob = bytearray(Crypto(KEY_A).encrypt(Secret("value"), aad=AAD))
        blob[1:7] = bytes.fromhex(Crypto(KEY_B).key_id)
        with pytest.raises(StoreFormatError, match="failed authentication"):
            ring.decrypt(bytes(blob), aad=AAD)

    def test_unknown_key_id_rereads_the_source(self, tmp_path: Path) -> None:
        """A worker opened before a rotation reads the key file again when it meets the new key's id."""
        path = tmp_path / "ring.key"
        path.write_text(encode_key(KEY_A))
        path.chmod(0o600)
        worker = Crypto([KEY_A], source=KeySource(str(path), path=path))
        blob = Crypto(KEY_B).encrypt(Secret("rotated"), aad=AAD)
        path.write_text(f"{encode_key(KEY_B)}\n{encode_key(KEY_A)}\n")
        assert worker.decrypt(blob, aad=AAD).reveal() == "rotated"
        assert worker.key_id == Crypto(KEY_B).key_id  # it now writes with the new primary too

    def test_fingerprint_key_survives_in_sealed_form(self) -> None:
        """The sealed fingerprint key, adopted by a ring whose primary differs, gives the same fingerprints."""
        old = Crypto(KEY_A)
        check = old.encrypt_bytes(b"check", aad=KEY_CHECK_AAD)
        sealed = old.sealed_fingerprint_key(aad="fp")
        new = Crypto([KEY_B, KEY_A])
        new.unlock(new.reencrypt(check, aad=KEY_CHECK_AAD), aad=KEY_CHECK_AAD,
                   fingerprint_key=new.reencrypt(sealed, aad="fp"), fingerprint_aad="fp")  # fmt: skip
        assert new.fingerprint("tok") == old.fingerprint("tok") != Crypto(KEY_B).fingerprint("tok")

    def test_without_a_sealed_fingerprint_key_the_store_s_first_key_is_used(self) -> None:
        """Before any rotation, the fingerprint key comes from the key that opens the key check, even when a new
        key was already put first in the ring."""
        check = format_1_blob(KEY_A, b"check", KEY_CHECK_AAD)
        ring = Crypto([KEY_B, KEY_A])
        ring.unlock(check, aad=KEY_CHECK_AAD, fingerprint_key=None, fingerprint_aad="fp")
        assert ring.fingerprint("tok") == Crypto(KEY_A).fingerprint("tok")


# --- rotation ----------------------------------------------------------------------------------------------


def test_keys_rotate_with_a_key_file(tmp_path: Path, make_sim: Sim) -> None:
    """`keys rotate` adds a key, re-encrypts everything (secrets, tokens, meta, recovery files) and retires the
    old key: values, fingerprints and later fingerprints are unchanged, and refreshing still works."""
    sim = make_sim()
    url, before = world(tmp_path, sim)
    key_file = tmp_path / "s.db.key"
    old_id = key_file_ids(key_file)[0]
    store = open_store(url, create=False)
    g = store.get_grant("g")
    store.save_recovery("g", expected_generation=g.generation, attempt_id=0, now=0.0,
                        update=GrantUpdate(refresh_token=None, access_token=Secret("recovered-access-token-value"),
                                           expires_at=4e9, scopes=None))  # fmt: skip
    store.close()

    old_key_text = key_file.read_text().strip()
    code, out, err = run_cli("--store", url, "keys", "rotate")

    assert code == 0, err
    for key_text in (old_key_text, key_file.read_text().strip()):
        assert key_text[:8] not in out + err
    new_ids = key_file_ids(key_file)
    assert len(new_ids) == 1 and new_ids[0] != old_id
    assert f"retired key {old_id}" in out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    retired_file = tmp_path / "s.db.key.retired"
    assert key_file_ids(retired_file) == [old_id]
    assert stat.S_IMODE(retired_file.stat().st_mode) == 0o600
    assert snapshot(url) == before
    store = open_store(url, create=False)
    try:
        assert census(store) == {new_ids[0]: 2 + 1 + 3 + 1}  # meta x2, client secret, 3 tokens, 1 file
        assert store.replay_recovery(now=1.0) == ["g"]
        assert store.get_grant("g").access_token == Secret("recovered-access-token-value")
    finally:
        store.close()
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        assert keeper.refresh("h", force=True).generation == 2
    code, out, _ = run_cli("--store", url, "keys", "purge")
    assert code == 0 and f"retired key {old_id}: deleted" in out
    assert not retired_file.exists()


def test_a_late_write_with_the_old_key_stays_readable(tmp_path: Path, make_sim: Sim) -> None:
    """A worker that read a grant before the rotation may commit with the old key after the old key was
    retired: the value stays readable (retired keys still decrypt), `keys purge` keeps that key, and the next
    rotation moves the value on."""
    sim = make_sim()
    url, _ = world(tmp_path, sim)
    old_key = parse_ring((tmp_path / "s.db.key").read_text(), origin="test")[0]
    assert run_cli("--store", url, "keys", "rotate")[0] == 0
    late = Secret("a successor committed by a worker still on the old ring")
    store = open_store(url, create=False)
    with store._tx() as conn:
        conn.execute("UPDATE grants SET refresh_token = ? WHERE name = 'g'", (Crypto(old_key).encrypt(late, aad=AAD),))
    store.close()
    assert snapshot(url)["tokens"]["g"][0] == late  # type: ignore[index]
    code, out, _ = run_cli("--store", url, "keys", "purge")
    assert code == 0 and f"retired key {Crypto(old_key).key_id}: still encrypts 1 values" in out
    assert run_cli("--store", url, "keys", "rotate")[0] == 0
    assert run_cli("--store", url, "keys", "purge")[0] == 0
    assert not (tmp_path / "s.db.key.retired").exists()
    assert snapshot(url)["tokens"]["g"][0] == late  # type: ignore[index]


def test_format_1_store_opens_and_rotates(tmp_path: Path, make_sim: Sim) -> None:
    """A store whose values were all written before key ids opens without a migration, and rotation moves
    every value to the new format with the fingerprints it had."""
    sim = make_sim()
    url, before = world(tmp_path, sim)
    key = parse_ring((tmp_path / "s.db.key").read_text(), origin="test")[0]
    store = open_store(url, create=False)
    crypto = store._crypto
    # Rewrite every value as the previous grantkeeper release did.
    with store._tx() as conn:
        for table, key_col, column in [
            ("meta", "key", "value"),
            ("providers", "name", "client_secret"),
            ("grants", "name", "refresh_token"),
            ("grants", "name", "access_token"),
        ]:
            for name, blob in conn.execute(f"SELECT {key_col}, {column} FROM {table}").fetchall():
                if blob is None:
                    continue
                aad = KEY_CHECK_AAD if table == "meta" else f"grantkeeper/{table}/{name}/{column}"
                plain = crypto.decrypt_bytes(blob, aad=aad)
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key_col} = ?",
                             (format_1_blob(key, plain, aad), name))  # fmt: skip
    assert set(census(store)) == {FORMAT_1}
    store.close()
    assert snapshot(url) == before
    code, _, err = run_cli("--store", url, "keys", "rotate")
    assert code == 0, err
    assert snapshot(url) == before
    store = open_store(url, create=False)
    try:
        assert set(census(store)) == {store._crypto.key_id}
    finally:
        store.close()


def test_keys_list_shows_ids_and_counts_never_keys(tmp_path: Path, make_sim: Sim) -> None:
    url, _ = world(tmp_path, make_sim())
    key_text = (tmp_path / "s.db.key").read_text().strip()
    code, out, _ = run_cli("--store", url, "keys", "list")
    assert code == 0
    assert f"key {key_file_ids(tmp_path / 's.db.key')[0]} (primary): 5 values" in out
    assert key_text not in out
    assert key_text[:8] not in out


def test_keys_generate_writes_an_owner_only_file_once(tmp_path: Path) -> None:
    target = tmp_path / "new.key"
    code, out, _ = run_cli("keys", "generate", "--output", str(target))
    assert code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().strip() not in out
    assert key_file_ids(target)[0] in out
    first = target.read_text()
    code, _, err = run_cli("keys", "generate", "--output", str(target))
    assert code == 3 and "already exists" in err
    assert target.read_text() == first


def test_rotating_an_env_key_needs_the_new_key_first(tmp_path: Path, make_sim: Sim) -> None:
    """grantkeeper cannot change $GRANTKEEPER_KEY: with one key there, rotate explains what to do, exit 3."""
    env = {KEY_ENV: TEST_KEY}
    url = f"sqlite://{tmp_path}/env.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, TEST_KEY)
        open_store(url).close()
    result = subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", url, "keys", "rotate"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert "keys generate" in result.stderr and "NEW,OLD" in result.stderr
    assert TEST_KEY not in result.stderr + result.stdout


def test_store_keyed_by_a_command(tmp_path: Path, make_sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SQLite store whose key comes from $GRANTKEEPER_KEY_COMMAND works without a key file; `keys rotate`
    asks for the new key to be put first in the command's output, then rotates once it is."""
    script = tmp_path / "kms.py"
    script.write_text(f"print({encode_key(KEY_A)!r})\n")
    monkeypatch.setenv(KEY_COMMAND_ENV, f"{sys.executable} {script}")
    url = f"sqlite://{tmp_path}/cmd.db"
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, make_sim())
        keeper.refresh("g")
    assert not (tmp_path / "cmd.db.key").exists()
    code, _, err = run_cli("--store", url, "keys", "rotate")
    assert code == 3 and KEY_COMMAND_ENV in err
    script.write_text(f"print({encode_key(KEY_B)!r}, {encode_key(KEY_A)!r})\n")
    code, out, err = run_cli("--store", url, "keys", "rotate")
    assert code == 0, err
    assert f"nothing uses key {Crypto(KEY_A).key_id} any more: remove it from ${KEY_COMMAND_ENV}" in out


ROTATE_CHILD = """
import os, signal, sys
from grantkeeper.stores import open_store
from grantkeeper.keys.rekey import rotate
store = open_store(sys.argv[1], create=False)
def progress(done, total):
    if done == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
rotate(store, progress=progress)
"""


@pytest.mark.slow
def test_rotation_killed_midway_resumes(tmp_path: Path, make_sim: Sim) -> None:
    """SIGKILL in the middle of re-encrypting leaves a store that works with the two-key ring; running
    `keys rotate` again finishes the job and retires the old key, with every value and fingerprint intact."""
    sim = make_sim()
    url, before = world(tmp_path, sim)
    key_file = tmp_path / "s.db.key"
    # Start as the CLI does: new key first in the file, then re-encrypt in a child that dies after 3 values.
    keys = parse_ring(key_file.read_text(), origin="test")
    key_file.write_text(f"{encode_key(KEY_B)}\n{encode_key(keys[0])}\n")
    killed = subprocess.run([sys.executable, "-c", ROTATE_CHILD, url, "3"], capture_output=True, timeout=60,
                            check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    store = open_store(url, create=False)
    try:
        usage = census(store)
        assert usage[Crypto(KEY_B).key_id] >= 2 and usage[Crypto(keys[0]).key_id] >= 1  # really half done
    finally:
        store.close()
    assert snapshot(url) == before  # the half-rotated store is fully usable
    code, out, err = run_cli("--store", url, "keys", "rotate")
    assert code == 0, err
    assert "re-encrypting everything with its first" in out
    assert key_file_ids(key_file) == [Crypto(KEY_B).key_id]
    assert snapshot(url) == before
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        assert keeper.refresh("g", force=True).generation == 3


def test_rotation_on_every_store_with_a_key_ring_in_the_environment(
    durable_url: str, make_sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite and PostgreSQL: with NEW,OLD in $GRANTKEEPER_KEY, rotate moves every value to NEW, after which
    the store opens with NEW alone and fingerprints are unchanged."""
    store_url = durable_url
    sim = make_sim()
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g")
        before = keeper.store.get_grant("g")
    new = encode_key(KEY_B)
    monkeypatch.setenv(KEY_ENV, f"{new},{TEST_KEY}")
    store = open_store(store_url, create=False)
    try:
        result = rotate(store)
    finally:
        store.close()
    assert result.retirable and result.usage == {Crypto(KEY_B).key_id: 5}
    monkeypatch.setenv(KEY_ENV, new)
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        after = keeper.store.get_grant("g")
        assert (after.refresh_token, after.access_token) == (before.refresh_token, before.access_token)
        assert (after.refresh_fp, after.access_fp) == (before.refresh_fp, before.access_fp)
        assert keeper.refresh("g", force=True).generation == before.generation + 1
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    with pytest.raises(EncryptionKeyError, match="different key"):
        open_store(store_url, create=False)


def test_refreshes_during_rotation_lose_nothing(
    durable_url: str, make_sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker refreshes grants while two rotations with opposite primaries rewrite them back and forth:
    every refresh commits, every grant ends on the provider's current refresh token, and a last rotation
    puts every value under one key."""
    store_url = durable_url
    sim = make_sim()
    names = [f"g{i}" for i in range(4)]
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        for name in names:
            add_grant(keeper, sim, grant=name)
    new = encode_key(KEY_B)
    monkeypatch.setenv(KEY_ENV, f"{new},{TEST_KEY}")
    forward = open_store(store_url, create=False)
    worker_keeper = Keeper.open(store_url, policy=FAST_POLICY)
    monkeypatch.setenv(KEY_ENV, f"{TEST_KEY},{new}")
    backward = open_store(store_url, create=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    refreshed = [0]

    def refresher() -> None:
        while not stop.is_set():
            for name in names:
                try:
                    worker_keeper.refresh(name, force=True)
                    refreshed[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    worker = threading.Thread(target=refresher)
    worker.start()
    rotations = 0
    try:
        while (refreshed[0] < 40 or rotations < 10) and not errors:
            rotate(forward if rotations % 2 else backward)
            rotations += 1
    finally:
        stop.set()
        worker.join()
        worker_keeper.close()
        backward.close()
    try:
        assert errors == []
        for name in names:
            grant = forward.get_grant(name)
            assert sim.is_active(grant.refresh_token.reveal())  # type: ignore[attr-defined, union-attr]
        assert set(rotate(forward).usage) == {Crypto(KEY_B).key_id}
    finally:
        forward.close()


def test_rotation_pages_through_every_row(durable_url: str, monkeypatch: pytest.MonkeyPatch, make_sim: Sim) -> None:
    """Values are read a page at a time: with pages of 2 rows, every provider secret and grant token of a
    larger store is still rewritten, counted and readable."""
    from grantkeeper.keys import rekey
    from grantkeeper.model import Provider

    monkeypatch.setattr(rekey, "_PAGE", 2)
    store = open_store(durable_url)
    for p in range(3):
        store.put_provider(Provider(name=f"p{p}", token_url="https://as.example/token", client_id="c",
                                    client_secret=Secret(f"client-secret-{p}")), now=0.0)  # fmt: skip
    for g in range(7):
        store.import_grant(f"g{g}", provider="p0", refresh_token=Secret(f"refresh-token-{g}"), scopes=(), now=0.0)
    store.close()
    monkeypatch.setenv(KEY_ENV, f"{encode_key(KEY_B)},{TEST_KEY}")
    store = open_store(durable_url, create=False)
    try:
        result = rotate(store)
        assert result.rewritten == 1 + 3 + 7 and result.usage == {Crypto(KEY_B).key_id: 2 + 3 + 7}
        assert [g.refresh_token for g in store.list_grants()] == [Secret(f"refresh-token-{g}") for g in range(7)]
        assert [p.client_secret for p in store.list_providers()] == [Secret(f"client-secret-{p}") for p in range(3)]
    finally:
        store.close()


# --- file modes ------------------------------------------------------------------------------------------


def test_store_files_are_owner_only(tmp_path: Path, make_sim: Sim) -> None:
    """A new store's directory is 0700; the database, WAL, key, recovery and liveness files 0600; the recovery
    and liveness directories 0700."""
    sim = make_sim()
    url = f"sqlite://{tmp_path}/deep/dir/s.db"
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        keeper.refresh("g")
        g = keeper.store.get_grant("g")
        keeper.store.save_recovery("g", expected_generation=g.generation, attempt_id=0, now=0.0,
                                   update=GrantUpdate(refresh_token=None, access_token=Secret("x" * 20),
                                                      expires_at=4e9, scopes=None))  # fmt: skip
        directory = tmp_path / "deep" / "dir"
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*")}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert modes.pop("s.db.recovery") == 0o700
    assert modes.pop("s.db.live") == 0o700  # the workers' liveness lock files (docs/recovery.md)
    assert {"s.db", "s.db-wal", "s.db.key"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_rotation_uses_the_stores_own_api_only(store: SQLStore) -> None:
    """`census` works on a fresh store of every kind: the key check is the only value, under the primary."""
    assert census(store) == {store._crypto.key_id: 1}
