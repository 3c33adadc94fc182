"""The store under damage: truncated, corrupted, unreadable, or on a full disk, before or during a refresh.

Damage found at open is a configuration error (exit 3) that says what to do, never a silent re-initialisation,
a "retry later" or an unexpected error. Damage that strikes between the provider's answer and the commit never
costs the successor refresh token (I1): it goes to local recovery storage, and if that cannot be written
either, the refresh fails naming the successor by fingerprint.

CLI cases run the installed ``grantkeeper`` console script in a subprocess, held at the ``before_commit``
failpoint (``wait:PATH``) while this process damages the store; library cases use `Keeper` with a failpoint
hook. The disk is made full for real: a small tmpfs (mounted when the tests run as root) or, anywhere,
RLIMIT_FSIZE in a child with SIGXFSZ ignored, so that writes fail with EFBIG.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grantkeeper import AsyncKeeper, Keeper, Secret, StoreFormatError, StoreUnavailable
from grantkeeper import _failpoints as failpoints
from grantkeeper.stores import open_store
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, resource_ok, setup_grant
from tests.unprivileged import GRANTKEEPER, run_obeying_modes

Sim = Callable[..., object]


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    return {**env, "GRANTKEEPER_STORE": url, **extra}


def cli(url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRANTKEEPER), *args], capture_output=True, text=True, env=cli_env(url, **extra),
                          timeout=120, check=False)  # fmt: skip


def assert_exit_3(done: subprocess.CompletedProcess[str], code: str, *fragments: str) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith(f"grantkeeper: error[{code}]: "), done.stderr
    assert "retry" not in done.stderr and "unexpected error" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def successor(sim: object) -> str:
    """The refresh token the simulator now accepts (its single grant family's current one)."""
    active = [t for t in sim.issued_tokens() if sim.is_active(t)]  # type: ignore[attr-defined]
    assert len(active) == 1
    return str(active[0])


def fingerprint(url: str, token: str) -> str:
    store = open_store(url, create=False)
    try:
        return store.fingerprint(Secret(token))
    finally:
        store.close()


def stored_refresh_token(url: str) -> tuple[int, str]:
    store = open_store(url, create=False)
    try:
        grant = store.get_grant("g")
        assert grant.refresh_token is not None
        return grant.generation, grant.refresh_token.reveal()
    finally:
        store.close()


def truncate(db: Path) -> None:
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            os.truncate(path, 0)


def corrupt(db: Path) -> None:
    """Random bytes over the header of every b-tree page (page 1's after its first 100 bytes, so SQLite still
    takes the file for a database and must find the damage in its pages) and over the WAL's first frames."""
    size = db.stat().st_size
    with open(db, "r+b") as f:
        for page in range(0, size, 4096):
            f.seek(page + 100 if page == 0 else page)
            f.write(os.urandom(200))
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 32:
        with open(wal, "r+b") as f:
            f.seek(32)
            f.write(os.urandom(min(3000, wal.stat().st_size - 32)))


def held_refresh(url: str, go: Path, *args: str) -> subprocess.Popen[str]:
    """``grantkeeper refresh g --force`` held at before_commit (the provider has answered) until `go` exists."""
    return subprocess.Popen(
        [str(GRANTKEEPER), *args, "refresh", "g", "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=cli_env(url, GRANTKEEPER_FAILPOINTS=f"before_commit=wait:{go}"),
    )  # fmt: skip


def wait_for_provider_call(sim: object, calls: int = 1) -> None:
    deadline = time.monotonic() + 60
    while sim.stats.refresh_calls < calls:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the held refresh never reached the provider"
        time.sleep(0.02)


def finish(child: subprocess.Popen[str], go: Path) -> subprocess.CompletedProcess[str]:
    go.touch()
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*.tmp"))


# ----------------------------------------------------------------------------- damage found at open


def test_truncated_store_is_refused_not_reinitialised(tmp_path: Path, make_sim: Sim) -> None:
    """A store truncated to 0 bytes beside its key file was silently re-initialised ("no grants"); now every
    command, the creating one included, refuses it, says to restore a backup, and leaves it as it is."""
    db = tmp_path / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, make_sim())
    truncate(db)
    for args in (("grant", "list"), ("status",), ("provider", "add", "p2", "--token-url", "https://as.example/t",
                                                   "--client-id", "c")):  # fmt: skip
        assert_exit_3(cli(url, *args), "store_format", "is empty", "restore it from a backup",
                      f"key file {db}.key exists")  # fmt: skip
    with pytest.raises(StoreFormatError, match="truncated or replaced"):
        Keeper.open(url)
    assert db.stat().st_size == 0


def test_store_creation_killed_before_it_lands_leaves_no_store(tmp_path: Path) -> None:
    """SIGKILL once the new store is complete under its temporary name, before it is linked into place: no
    store file appears (the old code left an empty one, which a later open would take for damage), a reading
    command says there is no store, and creating it again works."""
    db = tmp_path / "grants.db"
    url = f"sqlite://{db}"
    add = ("provider", "add", "p", "--token-url", "https://as.example/t", "--client-id", "c")
    killed = cli(url, *add, GRANTKEEPER_KEY=TEST_KEY, GRANTKEEPER_FAILPOINTS="private_file_written=kill")
    assert killed.returncode == -signal.SIGKILL
    assert not db.exists()
    assert_exit_3(cli(url, "grant", "list", GRANTKEEPER_KEY=TEST_KEY), "configuration", "no grantkeeper store")
    again = cli(url, *add, GRANTKEEPER_KEY=TEST_KEY)
    assert again.returncode == 0, again.stderr
    assert cli(url, "provider", "list", GRANTKEEPER_KEY=TEST_KEY).returncode == 0


@pytest.mark.parametrize("target", ["fingerprint", "pages"])
def test_corrupted_data_is_store_format(tmp_path: Path, make_sim: Sim, target: str) -> None:
    """Bytes that are not UTF-8 where a fingerprint was ("Could not decode to UTF-8 ... retry later", exit 7),
    or pages overwritten at random, are damage: store_format, exit 3, with the integrity check to run; the
    undecodable bytes are not echoed."""
    db = tmp_path / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, make_sim())
    data = bytearray(db.read_bytes())
    if target == "fingerprint":
        at = data.find(b"fp_")
        assert at > 0
        data[at : at + 19] = b"\xff" * 19
        db.write_bytes(bytes(data))
    else:
        corrupt(db)
    done = cli(url, "status", "g")
    assert_exit_3(done, "store_format", "PRAGMA integrity_check", "restore it from a backup")
    assert "\ufffd" not in done.stderr
    with pytest.raises(StoreFormatError, match="integrity_check"), Keeper.open(url, create=False) as keeper:
        keeper.status("g")


def test_store_directory_without_permission(tmp_path: Path, make_sim: Sim) -> None:
    """A store directory with mode 000 gave exit 1 "unexpected error: PermissionError"; it is a configuration
    error naming the directory, for a reading command and for the one that would create the store."""
    db = tmp_path / "private" / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, make_sim())
    db.parent.chmod(0)
    try:
        for args in (("grant", "list"), ("provider", "add", "p2", "--token-url", "https://as.example/t",
                                         "--client-id", "c")):  # fmt: skip
            done = run_obeying_modes([str(GRANTKEEPER), *args], env=cli_env(url))
            assert_exit_3(done, "configuration", f"this user cannot enter {db.parent}")
    finally:
        db.parent.chmod(0o700)


def test_new_directories_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Every directory created for a store (and its recovery storage) is 0700, also under umask 000 (they were
    0777 then), and the store and key files are 0600; directories that existed keep their mode."""
    tmp_path.chmod(0o755)
    db = tmp_path / "a" / "b" / "c" / "grants.db"
    done = subprocess.run(
        [str(GRANTKEEPER), "provider", "add", "p", "--token-url", "https://as.example/t", "--client-id", "c"],
        capture_output=True, text=True, env=cli_env(f"sqlite://{db}"), umask=0, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"a": 0o700, "a/b": 0o700, "a/b/c": 0o700, "a/b/c/grants.db": 0o600,
                     "a/b/c/grants.db.key": 0o600}  # fmt: skip
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    from grantkeeper._fsutil import make_private_dirs  # what recovery storage and the PostgreSQL store use too

    old = os.umask(0)
    try:
        make_private_dirs(tmp_path / "r" / "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == stat.S_IMODE((tmp_path / "r/s").stat().st_mode) == 0o700


# ----------------------------------------------------------------------------- damage during a refresh


@pytest.mark.parametrize("damage", [truncate, corrupt], ids=["truncated", "corrupted"])
def test_store_damaged_during_refresh_keeps_the_successor(
    tmp_path: Path, make_sim: Sim, damage: Callable[[Path], None]
) -> None:
    """The store is truncated or corrupted after the provider rotated and before the commit: the successor goes
    to recovery storage (it was dropped: no recovery file at all); the damaged store is then refused; restored
    from the backup, the next command commits the kept successor without calling the provider again."""
    sim = make_sim()
    db = tmp_path / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, sim)
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy2(db, backup / db.name)
    go = tmp_path / "go"
    child = held_refresh(url, go)
    wait_for_provider_call(sim)
    damage(db)
    done = finish(child, go)
    assert done.returncode == 0, done.stderr
    assert "keeping the new token set in local recovery storage" in done.stderr
    assert len(list((tmp_path / "grants.db.recovery").glob("*.gkr"))) == 1
    assert not leftovers(tmp_path)
    assert_exit_3(cli(url, "status", "g"), "store_format")

    shutil.copy2(backup / db.name, db)
    for wal in (tmp_path / "grants.db-wal", tmp_path / "grants.db-shm"):
        wal.unlink(missing_ok=True)
    token = cli(url, "token", "g")
    assert token.returncode == 0, token.stderr
    assert resource_ok(sim, token.stdout.strip())
    assert stored_refresh_token(url) == (2, successor(sim))
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    assert not list((tmp_path / "grants.db.recovery").glob("*.gkr"))


def test_successor_ahead_of_a_restored_backup_is_committed(tmp_path: Path, make_sim: Sim) -> None:
    """Restored from a backup older than the kept successor's generation, the store still gets the successor:
    it holds the only refresh token the provider accepts. It was deleted as "superseded" (and the next refresh
    would have spent the backup's dead token and declared the grant revoked); now the next command commits it as
    the generation it succeeds, and the token works without another provider call."""
    sim = make_sim()
    db = tmp_path / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, sim)
    backup = tmp_path / "backup.db"
    shutil.copy2(db, backup)
    assert cli(url, "refresh", "g", "--force").returncode == 0  # generation 2: the backup is one behind
    go = tmp_path / "go"
    child = held_refresh(url, go)
    wait_for_provider_call(sim, calls=2)
    truncate(db)
    assert finish(child, go).returncode == 0
    assert len(list((tmp_path / "grants.db.recovery").glob("*.gkr"))) == 1
    shutil.copy2(backup, db)
    for wal in (tmp_path / "grants.db-wal", tmp_path / "grants.db-shm"):
        wal.unlink(missing_ok=True)
    token = cli(url, "token", "g")
    assert token.returncode == 0, token.stderr
    assert "restored from an older backup?" in token.stderr
    assert resource_ok(sim, token.stdout.strip())
    assert stored_refresh_token(url) == (3, successor(sim))
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]
    assert not list((tmp_path / "grants.db.recovery").glob("*.gkr"))


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.anyio
async def test_keeper_keeps_the_successor_when_the_commit_raises_anything(
    tmp_path: Path, make_sim: Sim, api: str
) -> None:
    """Through the library (Keeper and AsyncKeeper): a commit failing with an error that is not a store error at
    all (here a bug in the store) still sends the successor to recovery storage, and the caller gets its access
    token."""
    sim = make_sim()
    url = f"sqlite://{tmp_path}/grants.db"
    setup_grant(url, sim)

    def broken_commit(*_: object, **__: object) -> object:
        raise RuntimeError("a bug in the commit")

    if api == "sync":
        with Keeper.open(url, policy=FAST_POLICY) as keeper:
            keeper.store.commit = broken_commit  # type: ignore[method-assign]
            token = keeper.access_token("g")
    else:
        async with await AsyncKeeper.open(url, policy=FAST_POLICY) as keeper:
            keeper.store.commit = broken_commit  # type: ignore[method-assign]
            token = await keeper.access_token("g")
    assert resource_ok(sim, token)
    # The commit never ran, so generation 2 can only have come from recovery storage: by the keeper's background
    # replay, or else at this open.
    with Keeper.open(url) as keeper:
        grant = keeper.store.get_grant("g")
        assert grant.generation == 2
        assert keeper.store.list_attempts("g", limit=1)[0].state.value == "recovered"
    assert stored_refresh_token(url)[1] == successor(sim)
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- a full disk during a refresh


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that really fills up (ENOSPC). Needs root (CAP_SYS_ADMIN) to mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_file_size_limit_during_refresh covers this unprivileged")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"running as root but cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30, check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; returns the filler file (remove it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    (disk / "probe").unlink(missing_ok=True)
    return filler


def test_disk_full_at_commit_keeps_the_successor_in_recovery_storage(
    tmp_path: Path, small_disk: Path, make_sim: Sim
) -> None:
    """The store's disk fills up before the commit; recovery storage (on another disk) takes the successor, with
    no stray temporary file; once space is free, the next command commits it without a provider call."""
    sim = make_sim()
    db = small_disk / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, sim)
    elsewhere = tmp_path / "recovery-elsewhere"
    elsewhere.mkdir(mode=0o700)
    (small_disk / "grants.db.recovery").symlink_to(elsewhere)
    go = tmp_path / "go"
    child = held_refresh(url, go)
    wait_for_provider_call(sim)
    filler = fill(small_disk)
    done = finish(child, go)
    assert done.returncode == 0, done.stderr
    assert "the disk is full" in done.stderr
    assert "kept in local recovery storage" in done.stdout  # not a bare "refreshed" while the store holds gen 1
    assert len(list(elsewhere.glob("*.gkr"))) == 1
    filler.unlink()
    assert not leftovers(small_disk) and not leftovers(elsewhere)
    token = cli(url, "token", "g")
    assert token.returncode == 0, token.stderr
    assert resource_ok(sim, token.stdout.strip())
    assert stored_refresh_token(url) == (2, successor(sim))
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


def test_disk_full_for_store_and_recovery_fails_naming_the_successor(small_disk: Path, make_sim: Sim) -> None:
    """Store and recovery storage on one full disk: `refresh` printed "refreshed: generation 2 -> 3" and exited 0
    while the successor lived only in memory, leaving a 0-byte .tmp. Now it exits 7 saying the successor (by
    fingerprint) could not be made durable, and leaves no partial file."""
    sim = make_sim()
    db = small_disk / "grants.db"
    url = f"sqlite://{db}"
    setup_grant(url, sim)
    go = small_disk.parent / "go"
    child = held_refresh(url, go)
    wait_for_provider_call(sim)
    filler = fill(small_disk)
    done = finish(child, go)
    filler.unlink()
    assert done.returncode == 7, done.stderr
    assert "refreshed" not in done.stdout
    assert "error[store_unavailable]" in done.stderr
    assert "could not be made durable" in done.stderr
    assert f"successor refresh token {fingerprint(url, successor(sim))}" in done.stderr
    assert not leftovers(small_disk)
    assert not list(small_disk.rglob("*.gkr"))


def test_keeper_on_a_full_disk_raises_then_commits_from_memory(small_disk: Path, make_sim: Sim) -> None:
    """Through the library: the refresh raises StoreUnavailable carrying the successor's fingerprint; the
    successor stays in this process, and once space is free the next call commits it without a provider call."""
    sim = make_sim()
    url = f"sqlite://{small_disk}/grants.db"
    setup_grant(url, sim)
    fillers: list[Path] = []
    failpoints.set_hook("before_commit", lambda: fillers.append(fill(small_disk)))
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        with pytest.raises(StoreUnavailable, match="could not be made durable") as raised:
            keeper.refresh("g", force=True)
        failpoints.clear_hooks()
        assert raised.value.fingerprint == keeper.store.fingerprint(Secret(successor(sim)))
        assert not leftovers(small_disk)
        fillers[0].unlink()
        assert resource_ok(sim, keeper.access_token("g"))
        assert keeper.store.get_grant("g").generation == 2
    assert stored_refresh_token(url) == (2, successor(sim))
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


_FSIZE_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from grantkeeper import Keeper, StoreUnavailable
    from grantkeeper import _failpoints
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us

    def no_file_may_grow():
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    _failpoints.set_hook("before_commit", no_file_may_grow)
    keeper = Keeper.open(sys.argv[1])
    try:
        keeper.refresh("g", force=True)
        print(json.dumps({"raised": None}))
    except StoreUnavailable as exc:
        print(json.dumps({"raised": exc.code, "fingerprint": exc.fingerprint, "message": exc.message}))
    """
)


def test_file_size_limit_during_refresh(tmp_path: Path, make_sim: Sim) -> None:
    """Without privileges: no file may grow from the commit on (RLIMIT_FSIZE 0, EFBIG). The commit and the
    recovery file both fail; the refresh raises naming the successor, and no partial recovery file is left."""
    sim = make_sim()
    url = f"sqlite://{tmp_path}/grants.db"
    setup_grant(url, sim)
    done = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, url], capture_output=True, text=True,
                          env=cli_env(url), timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["raised"] == "store_unavailable", outcome
    assert outcome["fingerprint"] == fingerprint(url, successor(sim))
    assert "could not be made durable" in outcome["message"]
    assert not leftovers(tmp_path)
    assert not list(tmp_path.rglob("*.gkr"))
