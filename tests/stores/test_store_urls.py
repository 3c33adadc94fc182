"""Store URLs: every documented and SQLAlchemy-style form opens the file it names, on every command, whatever
characters the path holds; a URL or file that cannot work is a configuration error (exit 3) saying what to do.

The CLI cases run the installed ``grantkeeper`` console script in a subprocess with the store in
$GRANTKEEPER_STORE, as the README shows; the library cases go through `Keeper.open`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from grantkeeper import ConfigurationError, Keeper, Provider
from grantkeeper.stores import store_path
from tests.unprivileged import GRANTKEEPER, run_obeying_modes

#: Directory and file names with every character that broke or could break a URL or SQLite URI.
NAMES = [
    ("plain", "grants.db"),
    ("with space", "my grants.db"),
    ("q?mark", "a?b.db"),
    ("hash#tag", "c#d.db"),
    ("per%cent", "e%f.db"),
    ("pct%20enc", "g%2Fh.db"),
    ("ünï-データ", "grünts.db"),
]
FORMS = ("three-slash", "four-slash", "relative")


def url_for(form: str, path: Path, cwd: Path) -> str:
    """The URL of `path` in `form`: ``sqlite:///abs`` (documented), ``sqlite:////abs`` (SQLAlchemy) or
    ``sqlite://relative`` (documented, relative to `cwd`)."""
    if form == "three-slash":
        return "sqlite://" + str(path)
    if form == "four-slash":
        return "sqlite:///" + str(path)
    return "sqlite://" + str(path.relative_to(cwd))


def cli(*args: str, store: str | None, cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    if store is not None:
        environment["GRANTKEEPER_STORE"] = store
    environment.update(env)
    return subprocess.run(
        [str(GRANTKEEPER), *args], input=stdin, capture_output=True, text=True, cwd=cwd, env=environment,
        timeout=120, check=False,
    )  # fmt: skip


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def expected_files(root: Path, path: Path) -> set[str]:
    """The store, its key file, and the directories leading to them: nothing else may appear."""
    found = {str(path.relative_to(root)), str(path.relative_to(root)) + ".key"}
    for parent in path.relative_to(root).parents:
        if str(parent) != ".":
            found.add(str(parent))
    return found


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("form", FORMS)
def test_each_form_names_the_absolute_path(form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///abs`` and ``sqlite:////abs`` name the same absolute file; ``sqlite://rel`` is resolved against
    the working directory at open, so a later chdir cannot move the store under a running process."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sub" / "grants.db"
    assert store_path(url_for(form, path, tmp_path)) == path


def test_home_and_many_slashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite://~/x`` is in the home directory; any run of leading slashes is the one root."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_path("sqlite://~/g.db") == tmp_path / "g.db"
    assert store_path("sqlite://///" + str(tmp_path).lstrip("/") + "/g.db") == tmp_path / "g.db"
    assert store_path("memory://") is None


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///tmp/somewhere/", "names no file"),
        ("/var/lib/grants.db", "write it as sqlite:///var/lib/grants.db"),
        ("mysql://db/grants", "unsupported store URL scheme 'mysql'"),
    ],
)
def test_urls_that_name_no_store_file_are_configuration_errors(url: str, hint: str) -> None:
    with pytest.raises(ConfigurationError, match=hint.replace("?", r"\?")):
        store_path(url)


# ----------------------------------------------------------------------------- through the library


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("folder", "file"), NAMES, ids=[n[0] for n in NAMES])
def test_keeper_creates_and_reopens_the_named_file(
    form: str, folder: str, file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is created at exactly the named path (no stray file or directory from a misread URI) and
    opens again with its grant: the second open reads the existing file through a read-only SQLite URI."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / folder / file
    url = url_for(form, path, tmp_path)
    with Keeper.open(url) as keeper:
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"))
        keeper.import_grant("g", provider="p", refresh_token="refresh-token-of-this-test")
    with Keeper.open(url, create=False) as keeper:
        assert keeper.store.get_grant("g").refresh_token.reveal() == "refresh-token-of-this-test"  # type: ignore[union-attr]
    assert everything_under(tmp_path) == expected_files(tmp_path, path)


# ----------------------------------------------------------------------------- through the command line


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("folder", "file"), [NAMES[0], ("s p?a#c%20e ü", "g r?a#n%ts.db")], ids=["plain", "nasty"])
def test_every_command_after_the_first_works(form: str, folder: str, file: str, tmp_path: Path) -> None:
    """`provider add` creates the store; every later command opens it (they exited 7 with "invalid uri
    authority" for ``sqlite:////abs``, and a ``?`` in the path opened a different file)."""
    path = tmp_path / folder / file
    url = url_for(form, path, tmp_path)
    added = cli("provider", "add", "p", "--token-url", "https://as.example/token", "--client-id", "c",
                "--rotation", "always", "--reuse-grace", "0", store=url, cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    imported = cli("grant", "import", "g", "--provider", "p", store=url, cwd=tmp_path, stdin="refresh-token-x\n")
    assert imported.returncode == 0, imported.stderr
    for args in (("provider", "list"), ("grant", "list"), ("status", "g")):
        done = cli(*args, store=url, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        assert "error" not in done.stderr
    assert "g" in cli("grant", "list", store=url, cwd=tmp_path).stdout.split()
    assert everything_under(tmp_path) == expected_files(tmp_path, path)


def test_the_readme_export_line_works(tmp_path: Path) -> None:
    """The README's own line, run by a shell: ``sqlite:///$HOME/...`` expands to four slashes."""
    script = (
        "export GRANTKEEPER_STORE=sqlite:///$HOME/.local/share/grantkeeper/grants.db\n"
        f'"{GRANTKEEPER}" provider add p --token-url https://as.example/token --client-id c || exit 20\n'
        f'"{GRANTKEEPER}" provider list || exit 21\n'
        f'"{GRANTKEEPER}" status || exit 22\n'
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    shell = subprocess.run(["sh", "-c", script], env={**environment, "HOME": str(tmp_path)}, capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert (tmp_path / ".local/share/grantkeeper/grants.db").is_file()


# ----------------------------------------------------------------------------- permanent problems: exit 3


def assert_configuration_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("grantkeeper: error["), done.stderr
    assert "retry" not in done.stderr
    assert "unexpected error" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr


def test_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    done = cli("provider", "add", "p", "--token-url", "https://as.example/t", "--client-id", "c",
               store=f"sqlite://{tmp_path}/afile/grants.db", cwd=tmp_path)  # fmt: skip
    assert_configuration_error(done, "is a file, not a directory")


def test_url_naming_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    for command in (("provider", "list"), ("provider", "add", "p", "--token-url", "https://as.example/t",
                                           "--client-id", "c")):  # fmt: skip
        done = cli(*command, store=f"sqlite://{tmp_path}/dir", cwd=tmp_path)
        assert_configuration_error(done, "is a directory", f"sqlite://{tmp_path}/dir/grants.db")


def test_path_without_scheme(tmp_path: Path) -> None:
    done = cli("provider", "list", store=f"{tmp_path}/grants.db", cwd=tmp_path)
    assert_configuration_error(done, f"write it as sqlite://{tmp_path}/grants.db")


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(os.urandom(8192))
    done = cli("provider", "list", store=f"sqlite://{tmp_path}/junk.db", cwd=tmp_path)
    assert_configuration_error(
        done, "error[store_format]", "is not a readable SQLite database", "PRAGMA integrity_check"
    )


def test_missing_store_for_a_reading_command(tmp_path: Path) -> None:
    done = cli("grant", "list", store=f"sqlite://{tmp_path}/nowhere/grants.db", cwd=tmp_path)
    assert_configuration_error(done, "no grantkeeper store at", "grantkeeper provider add")
    assert not (tmp_path / "nowhere").exists()


def _made_store(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "store" / "grants.db"
    url = f"sqlite://{path}"
    with Keeper.open(url) as keeper:
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c"))
    return path, url


def test_store_file_without_permission(tmp_path: Path) -> None:
    """A store file this user may not read or write (mode 000) is a configuration error naming the file."""
    path, url = _made_store(tmp_path)
    path.chmod(0)
    done = run_obeying_modes([str(GRANTKEEPER), "--store", url, "provider", "list"], cwd=tmp_path)
    assert_configuration_error(done, f"this user cannot read and write {path}")


def test_read_only_store_directory(tmp_path: Path) -> None:
    """A store whose directory is read-only (SQLite cannot create the -wal and -shm files) is a configuration
    error naming the directory, on a reading command and a writing one."""
    path, url = _made_store(tmp_path)
    path.parent.chmod(0o500)
    try:
        for command in (("provider", "list"), ("provider", "add", "q", "--token-url", "https://as.example/t",
                                                "--client-id", "c")):  # fmt: skip
            done = run_obeying_modes([str(GRANTKEEPER), "--store", url, *command], cwd=tmp_path)
            assert_configuration_error(done, f"this user cannot read and write {path.parent}")
    finally:
        path.parent.chmod(0o700)
