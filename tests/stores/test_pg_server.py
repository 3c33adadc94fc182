"""Tests of the throwaway PostgreSQL server used by the PostgreSQL tests and benchmarks."""

from __future__ import annotations

import psycopg
import pytest

from tests.pg_fixtures import require_postgres
from tests.pg_server import PostgresServer, process_alive

pytestmark = pytest.mark.postgres


def test_server_accepts_connection_and_is_version_15_or_newer(pg_server: PostgresServer) -> None:
    """The session server accepts a psycopg connection and reports PostgreSQL 15 or newer."""
    with psycopg.connect(pg_server.url) as conn:
        version = conn.info.server_version
        (user,) = conn.execute("SELECT current_user").fetchone() or (None,)
    assert version >= 150000
    assert user == "postgres"


def test_create_database_is_isolated(pg_server: PostgresServer, pg_url: str) -> None:
    """A table created in one fresh database is invisible in another."""
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
        conn.commit()
    other_url = pg_server.create_database("gk_isolation_other")
    try:
        with psycopg.connect(other_url) as conn:
            row = conn.execute("SELECT to_regclass('only_here')").fetchone()
            (dbname,) = conn.execute("SELECT current_database()").fetchone() or (None,)
        assert row == (None,)
        assert dbname == "gk_isolation_other"
    finally:
        pg_server.drop_database("gk_isolation_other")


def test_listens_on_loopback_only(pg_server: PostgresServer) -> None:
    """The server listens on 127.0.0.1 only, and its URL points there."""
    with psycopg.connect(pg_server.url) as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
    assert pg_server.url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"


def test_committed_data_survives_crash_and_restart(pg_restartable: PostgresServer) -> None:
    """Rows committed before stop_immediate are still there after start_again."""
    server = pg_restartable
    url = server.create_database("gk_durable")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        conn.commit()
    old_pid = server.pid
    assert old_pid is not None

    server.stop_immediate()
    assert not process_alive(old_pid)
    server.start_again()

    assert server.pid is not None
    assert server.pid != old_pid
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    assert rows == [(1, "one"), (2, "two")]


def test_close_leaves_no_server_process() -> None:
    """After close() the recorded postmaster pid is gone and the temp dir is removed."""
    require_postgres()
    server = PostgresServer().start()
    pid = server.pid
    directory = server.directory
    assert pid is not None
    assert process_alive(pid)
    server.close()
    assert not process_alive(pid)
    assert not directory.exists()
    server.close()  # idempotent


def test_kill_removes_postmaster_and_restart_recovers(pg_restartable: PostgresServer) -> None:
    """kill() SIGKILLs the postmaster; the cluster starts again after that."""
    server = pg_restartable
    pid = server.pid
    assert pid is not None
    server.kill()
    assert not process_alive(pid)
    server.start_again()
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
