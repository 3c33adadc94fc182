"""grantkeeper.admin: the one face through which the CLI (and the service) administer a store.

The CLI's own tests (test_keys, test_bundle, test_cli*, serve/test_apikey*) cover each command end to end; these
test the face itself: what each operation returns and leaves behind, with no CLI in between.
"""

from __future__ import annotations

import ast
import stat
from pathlib import Path

import pytest

from grantkeeper._exceptions import ConfigurationError, EncryptionKeyError
from grantkeeper._secrets import Secret
from grantkeeper.admin import Admin, BundleKey, generate_key_file, migrate, open_bundle, read_bundle, write_bundle
from grantkeeper.keys import KEY_ENV, census, encode_key, key_id, parse_ring
from grantkeeper.model import Provider
from grantkeeper.stores import open_store
from tests.conftest import TEST_KEY

KEY_B = bytes(range(1, 33))
SRC = Path(__file__).resolve().parents[2] / "src" / "grantkeeper"


class _Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at

    def monotonic(self) -> float:
        return self.at


def _filled(url: str) -> None:
    """A provider with a client secret and two grants."""
    store = open_store(url)
    try:
        store.put_provider(Provider(name="p", token_url="https://as.example/token", client_id="c",
                                    client_secret=Secret("client-secret-value")), now=0.0)  # fmt: skip
        for name in ("a", "b"):
            store.import_grant(name, provider="p", refresh_token=Secret(f"refresh-{name}"), scopes=("s",), now=0.0)
    finally:
        store.close()


def _ring_ids(path: Path) -> list[str]:
    return [key_id(k) for k in parse_ring(path.read_text(), origin="test")]


# --- schema ------------------------------------------------------------------------------------------------


def test_migrate_creates_a_store_at_the_latest_schema(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/new.db"
    status = migrate(url)
    assert status.up_to_date
    assert status.version == status.latest > 0
    with Admin.open(url) as admin:
        assert admin.schema_status() == status


# --- keys --------------------------------------------------------------------------------------------------


def test_rotation_with_a_key_file_adds_a_key_rewrites_everything_and_retires_the_old_key(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    _filled(url)
    key_file, retired_file = tmp_path / "s.db.key", tmp_path / "s.db.key.retired"
    [old] = _ring_ids(key_file)
    with Admin.open(url) as admin:
        before = admin.key_ring()
        assert [(k.key_id, k.role) for k in before.keys] == [(old, "primary")]
        assert before.keys[0].values == 1 + 1 + 2  # the key check, the client secret, two refresh tokens
        fingerprint = admin.store.get_grant("a").refresh_fp
        heard = []
        done = admin.rotate_keys(started=heard.append)
        assert heard == [done.start]
        assert done.start.added
        assert done.start.ring_size == 1
        new = done.start.primary
        assert new != old
        assert done.retired == (old,)
        assert done.result.retirable
        assert _ring_ids(key_file) == [new]
        assert _ring_ids(retired_file) == [old]
        assert stat.S_IMODE(retired_file.stat().st_mode) == 0o600
        assert [(k.key_id, k.role) for k in done.ring.keys] == [(new, "primary"), (old, "retired")]
        assert done.ring.keys[1].values == 0
        # The same open store goes on, writing with the new key: the ring was re-read in place.
        admin.store.import_grant("c", provider="p", refresh_token=Secret("refresh-c"), scopes=(), now=1.0)
        assert set(census(admin.store)) == {new}  # type: ignore[arg-type]
        assert admin.store.get_grant("a").refresh_token == Secret("refresh-a")
        assert admin.store.get_grant("a").refresh_fp == fingerprint
        purged = admin.purge_keys()
    assert [(p.key_id, p.deleted) for p in purged] == [(old, True)]
    assert not retired_file.exists()
    with Admin.open(url) as admin:
        assert admin.store.get_provider("p").client_secret == Secret("client-secret-value")
        assert admin.purge_keys() == ()


def test_rotation_with_a_key_in_the_environment_needs_the_new_key_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grantkeeper cannot change $GRANTKEEPER_KEY: with one key it refuses (nothing rewritten); with NEW,OLD it
    rewrites everything and reports the old key as unused, without touching any file."""
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    url = f"sqlite://{tmp_path}/env.db"
    _filled(url)
    with Admin.open(url) as admin:
        [old] = [k.key_id for k in admin.key_ring().keys]
        with pytest.raises(EncryptionKeyError, match="NEW,OLD"):
            admin.rotate_keys()
        assert set(census(admin.store)) == {old}  # type: ignore[arg-type]
    monkeypatch.setenv(KEY_ENV, f"{encode_key(KEY_B)},{TEST_KEY}")
    with Admin.open(url) as admin:
        done = admin.rotate_keys()
        assert not done.start.added
        assert done.start.ring_size == 2
        assert done.start.primary == key_id(KEY_B)
        assert done.retired == ()
        assert done.start.key_file is None
        assert [(k.key_id, k.role, k.values) for k in done.ring.keys][1] == (old, "older", 0)
        with pytest.raises(ConfigurationError, match="managed outside grantkeeper"):
            admin.purge_keys()
    assert sorted(p.name for p in tmp_path.iterdir() if "key" in p.name) == []


def test_a_memory_store_has_no_key_to_administer() -> None:
    with Admin.open("memory://", create=True) as admin, pytest.raises(ConfigurationError, match="no source"):
        admin.key_ring()


def test_generate_key_file_returns_the_id_of_the_key_it_wrote_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "new.key"
    made = generate_key_file(target)
    assert _ring_ids(target) == [made]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = target.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_key_file(target)
    assert target.read_bytes() == first


# --- bundles -----------------------------------------------------------------------------------------------


def test_bundle_round_trip_between_two_stores_with_the_admins_clock(tmp_path: Path) -> None:
    source, target = f"sqlite://{tmp_path}/a.db", f"sqlite://{tmp_path}/b.db"
    _filled(source)
    key = BundleKey.passphrase(Secret("correct horse battery"))
    with Admin(open_store(source), clock=_Clock(1000.0)) as admin:
        data = admin.export_bundle(key, grants=["a"])
    path = tmp_path / "out.gkb"
    write_bundle(path, data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigurationError, match="already exists"):
        write_bundle(path, b"other")
    store = open_store(target)
    admin = Admin(store, clock=_Clock(2000.0))
    try:
        report = admin.import_bundle(open_bundle(read_bundle(path), key))
        assert report.grants == ("a",)
        assert report.providers_added == ("p",)
        imported = store.get_grant("a")
        assert imported.refresh_token == Secret("refresh-a")
        assert imported.scopes == ("s",)
        assert store.get_provider("p").client_secret == Secret("client-secret-value")
    finally:
        store.close()


def test_read_bundle_of_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read bundle"):
        read_bundle(tmp_path / "missing.gkb")


# --- API keys ----------------------------------------------------------------------------------------------


def test_api_keys_are_created_listed_and_revoked_at_the_admins_clock(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    _filled(url)
    with Admin(open_store(url), clock=_Clock(5000.0)) as admin:
        made = admin.create_api_key("ci", grants="a,b*", scopes="token", lifetime=60.0)
        assert made.key not in repr(made)
        assert made.record.expires_at == 5060.0
        assert [(r.name, r.grants, r.scopes) for r in admin.api_keys()] == [("ci", ("a", "b*"), ("token",))]
        assert admin.store.api_key_digest(made.key) != made.key  # type: ignore[attr-defined]
        admin.clock = _Clock(5010.0)
        revoked = admin.revoke_api_key("ci")
        assert revoked.revoked_at == 5010.0
        assert not revoked.usable(5011.0)


# --- the CLI administers through this face ----------------------------------------------------------------

#: What the CLI may not import: administration goes through grantkeeper.admin. completion.py is the one
#: exception: tab completion reads the SQLite file with plain sqlite3 (fast, read-only) and so needs the URL's path.
_ADMINISTERED = ("grantkeeper.stores", "grantkeeper.keys", "grantkeeper.bundle", "grantkeeper.crypto",
                 "grantkeeper.keyring")  # fmt: skip


def test_the_cli_imports_no_store_key_or_bundle_module() -> None:
    found = []
    for path in sorted((SRC / "cli").glob("*.py")):
        if path.name == "completion.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.startswith(_ADMINISTERED)]
    assert found == []
