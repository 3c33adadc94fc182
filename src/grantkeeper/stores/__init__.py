"""Stores: the source of truth, selected by URL.

* ``sqlite:///absolute/path.db`` (SQLAlchemy's ``sqlite:////absolute/path.db`` too) or ``sqlite://relative.db``:
  the embedded default (see `store_path`);
* ``postgresql://user@host:port/dbname`` (libpq URL; ``postgres://`` too): many hosts, one source of truth.
  Needs the ``postgres`` extra and ``$GRANTKEEPER_KEY``; create or upgrade the schema with
  ``grantkeeper migrate``;
* ``memory://``: a private in-memory store for tests, gone when the process exits.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import platformdirs

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.engine.ports import AsyncStore
from grantkeeper.engine.threaded import threaded
from grantkeeper.stores.base import Claim, GenerationConflict, GrantUpdate, LeaseLost, Store
from grantkeeper.stores.sql import SQLStore
from grantkeeper.stores.sqlite import SQLiteStore

__all__ = [
    "STORE_ENV",
    "Claim",
    "GenerationConflict",
    "GrantUpdate",
    "LeaseLost",
    "SQLStore",
    "SQLiteStore",
    "Store",
    "backend",
    "default_store_url",
    "is_postgres",
    "open_async_store",
    "open_store",
]

STORE_ENV = "GRANTKEEPER_STORE"


def default_store_url() -> str:
    """``$GRANTKEEPER_STORE``, else an SQLite file in the user data directory."""
    env = os.environ.get(STORE_ENV)
    if env:
        return env
    return "sqlite://" + str(Path(platformdirs.user_data_dir("grantkeeper")) / "grantkeeper.db")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def store_path(url: str) -> Path | None:
    """The absolute path of the file behind a store URL (None for memory://); a clear error for anything else.

    ``sqlite:///abs/path.db`` and SQLAlchemy's ``sqlite:////abs/path.db`` both name ``/abs/path.db`` (so does
    ``sqlite:///$HOME/...`` when $HOME expands with its own leading slash); ``sqlite://relative.db`` is relative
    to the working directory at open, and ``sqlite://~/...`` to the home directory. The path is taken
    literally: no percent-decoding and no query string, so spaces, ``?``, ``#`` and ``%`` are part of the name.
    """
    if url.startswith("sqlite://"):
        raw = url.removeprefix("sqlite://")
        if raw.startswith("/"):
            # POSIX keeps a leading "//" as a distinct root, and SQLite's URI parser reads "//host/..." as a host:
            # every run of leading slashes means the one root.
            raw = "/" + raw.lstrip("/")
        if raw in ("", "/") or raw.endswith("/"):
            raise ConfigurationError(
                f"store URL {url!r} names no file; use sqlite:///absolute/path/grants.db or sqlite://relative.db"
            )
        return Path(raw).expanduser().absolute()
    if url in ("memory://", "memory:"):
        return None
    if "://" not in url and url.startswith(("/", "~", ".")):
        raise ConfigurationError(f"store URL {url!r} is a path, not a URL; write it as sqlite://{url}")
    scheme = url.split(":", 1)[0]
    raise ConfigurationError(
        f"unsupported store URL scheme {scheme!r}; use sqlite:///path/to/grantkeeper.db, "
        "postgresql://user@host/dbname or memory://"
    )


def open_store(url: str, *, create: bool = True, migrate: bool = False) -> SQLStore:
    """Open the store at `url`.

    `create` makes a new SQLite file (and its key file) if none exists; a PostgreSQL database gets its schema
    only from `migrate` (``grantkeeper migrate``), never implicitly.
    """
    if is_postgres(url):
        from grantkeeper.stores.postgres import PostgresStore  # psycopg is an optional extra

        return PostgresStore.open(url, migrate=migrate)
    return SQLiteStore.open(store_path(url), create=create, migrate=migrate)


async def open_async_store(url: str, *, create: bool = True, migrate: bool = False) -> AsyncStore:
    """Open the store at `url` for asyncio (`AsyncKeeper`): PostgreSQL natively, on psycopg_pool's
    AsyncConnectionPool with LISTEN on an asyncio connection; SQLite and memory:// in worker threads (the stdlib
    ``sqlite3`` module blocks). `create` and `migrate` as in `open_store`."""
    if is_postgres(url):
        from grantkeeper.stores.postgres_async import AsyncPostgresStore  # psycopg is an optional extra

        return await AsyncPostgresStore.open(url, migrate=migrate)
    return threaded(await asyncio.to_thread(open_store, url, create=create, migrate=migrate))


def backend(url: str) -> str:
    """The migrations folder for `url`'s kind of store."""
    return "postgres" if is_postgres(url) else "sqlite"
