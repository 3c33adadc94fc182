"""Pytest plugin: real-PostgreSQL fixtures.

Register with ``pytest_plugins = ["tests.pg_fixtures"]`` (or ``-p tests.pg_fixtures``).

Without usable server binaries the PostgreSQL tests are skipped with the reason,
unless ``GRANTKEEPER_REQUIRE_POSTGRES=1``, which turns the skip into a failure (CI).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer

REQUIRE_ENV = "GRANTKEEPER_REQUIRE_POSTGRES"

_db_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server")


def require_postgres() -> None:
    """Skip (or fail, when PostgreSQL is required) if no server can be started here."""
    reason = PostgresServer.available()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip("PostgreSQL tests skipped: " + reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; tests must not stop it (use pg_restartable)."""
    require_postgres()
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database on the session server, dropped after the test."""
    name = f"gk_test_{os.getpid()}_{next(_db_counter)}"
    url = pg_server.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        pg_server.drop_database(name)


@pytest.fixture
def pg_restartable() -> Iterator[PostgresServer]:
    """A private, started server that the test may stop, crash and restart; closed afterwards."""
    require_postgres()
    with PostgresServer() as server:
        yield server
