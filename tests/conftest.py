"""Shared fixtures: stores of every kind, the provider simulator, keepers wired to both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grantkeeper._failpoints import clear_hooks
from grantkeeper.stores import SQLStore, open_store

pytest_plugins = ["tests.pg_fixtures", "tests.dot_server", "tests.keeper_fixtures"]

STORE_KINDS = ("memory", "sqlite", "postgres")
#: Fixed for the test session: PostgreSQL stores need $GRANTKEEPER_KEY (there is no key file beside a server).
TEST_KEY = "dGVzdC1rZXktZm9yLWdyYW50a2VlcGVyLXRlc3RzLTE"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's store, key or failpoints."""
    monkeypatch.delenv("GRANTKEEPER_KEY", raising=False)
    monkeypatch.delenv("GRANTKEEPER_FAILPOINTS", raising=False)
    monkeypatch.setenv("GRANTKEEPER_STORE", f"sqlite://{tmp_path}/default-store.db")
    yield
    clear_hooks()


def _store_of_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/grants.db"
    url: str = request.getfixturevalue("pg_url")
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    open_store(url, migrate=True).close()
    return url


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One store of each kind; the PostgreSQL one is a fresh, migrated database on the test server."""
    return _store_of_kind(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def postgres_store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, migrated PostgreSQL database; $GRANTKEEPER_KEY and a recovery dir set (child processes inherit them)."""
    return _store_of_kind("postgres", request, tmp_path, monkeypatch)


@pytest.fixture(params=[kind for kind in STORE_KINDS if kind != "memory"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store several keepers or processes can share: SQLite and PostgreSQL (memory:// is private to one)."""
    return _store_of_kind(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/grants.db"


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., object]]:
    """Start provider simulators with the given options; all are stopped at the end."""
    from grantkeeper.testing.simulator import ProviderSimulator

    started: list[ProviderSimulator] = []

    def factory(**options: object) -> ProviderSimulator:
        sim = ProviderSimulator(**options)  # type: ignore[arg-type]
        sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()
