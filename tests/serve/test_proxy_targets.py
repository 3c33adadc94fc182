"""`ProxyTargets` keeps a grant's provider while the SQLite store has had no commit since it read it, and reads it
again after any commit (an operator's ``provider add --api-base-url`` from another process included); a store
without a probe that sees every write is read on every request."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from grantkeeper import Keeper, Provider
from grantkeeper._exceptions import UnknownGrant
from grantkeeper.serve.targets import ProxyTargets
from grantkeeper.stores import SQLStore, open_store

API = "https://api.example/v1"


def _store_with_grant(url: str) -> None:
    with Keeper.open(url) as keeper:
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c", api_base_url=API))
        keeper.import_grant("g", provider="p", refresh_token="refresh-token-value-0123456789")


def _set_base_url(url: str, base_url: str | None) -> None:
    """What ``grantkeeper provider add p --api-base-url`` does, from a connection of another store object."""
    other = open_store(url)
    try:
        other.put_provider(dataclasses.replace(other.get_provider("p"), api_base_url=base_url), now=1.0)
    finally:
        other.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/targets.db"
    _store_with_grant(url)
    return url


def test_kept_while_nothing_committed_and_read_again_after_a_commit(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    assert isinstance(store, SQLStore)

    async def scenario() -> list[str | None]:
        targets = ProxyTargets(store)
        seen = [(await targets.provider("g")).api_base_url for _ in range(5)]
        assert targets.reads == 1
        _set_base_url(sqlite_url, "https://moved.example/api")
        seen.append((await targets.provider("g")).api_base_url)
        assert targets.reads == 2
        _set_base_url(sqlite_url, None)
        seen.append((await targets.provider("g")).api_base_url)
        return seen

    try:
        assert asyncio.run(scenario()) == [API] * 5 + ["https://moved.example/api", None]
    finally:
        store.close()


def test_an_unknown_grant_is_refused_every_time_and_not_kept(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    assert isinstance(store, SQLStore)

    async def scenario() -> int:
        targets = ProxyTargets(store)
        for _ in range(2):
            with pytest.raises(UnknownGrant):
                await targets.provider("nope")
        return targets.reads

    try:
        assert asyncio.run(scenario()) == 2
    finally:
        store.close()


def test_a_store_without_a_probe_is_read_every_time() -> None:
    with Keeper.open("memory://") as keeper:  # one connection, whose own commits a probe would not see
        keeper.add_provider(Provider(name="p", token_url="https://as.example/token", client_id="c", api_base_url=API))
        keeper.import_grant("g", provider="p", refresh_token="refresh-token-value-0123456789")
        store = keeper.store
        assert isinstance(store, SQLStore)

        async def scenario() -> list[str | None]:
            targets = ProxyTargets(store)
            seen = [(await targets.provider("g")).api_base_url for _ in range(3)]
            store.put_provider(dataclasses.replace(store.get_provider("p"), api_base_url="https://moved.example"),
                               now=1.0)  # fmt: skip
            seen.append((await targets.provider("g")).api_base_url)
            assert targets.reads == 4
            return seen

        assert asyncio.run(scenario()) == [API] * 3 + ["https://moved.example"]
