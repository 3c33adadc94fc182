"""`AsyncStore` derives its awaited methods from `Store`'s declarations: one signature per method, two faces."""

from __future__ import annotations

import inspect

import pytest

from grantkeeper.engine.ports import AsyncStore, Store
from grantkeeper.stores.postgres_async import AsyncPostgresStore


def _store_methods() -> set[str]:
    return {name for name, value in vars(Store).items() if inspect.isfunction(value) and not name.startswith("_")}


def test_every_store_method_is_an_abstract_member_of_the_async_face() -> None:
    assert _store_methods() == set(AsyncStore.__abstractmethods__)


@pytest.mark.parametrize("name", ["claim", "import_grant", "wait_for_change", "pending_recovery"])
def test_awaited_member_keeps_the_store_signature_and_is_a_coroutine_function(name: str) -> None:
    member = getattr(AsyncStore, name)
    assert inspect.signature(member) == inspect.signature(getattr(Store, name))
    assert inspect.iscoroutinefunction(member)


def test_async_store_missing_a_method_cannot_be_instantiated() -> None:
    class Partial(AsyncStore):
        def fingerprint(self, token: object) -> str:
            return "fp"

        def subscribe(self, subscriber: object) -> None:
            return None

    with pytest.raises(TypeError, match="claim"):
        Partial()


@pytest.mark.anyio
async def test_unimplemented_member_called_through_super_says_which() -> None:
    class Forwarding(AsyncPostgresStore):
        async def names(self, kind: str) -> list[str]:
            return await AsyncStore.names(self, kind)

    store = object.__new__(Forwarding)
    with pytest.raises(NotImplementedError, match="Forwarding does not implement names"):
        await store.names("grant")


def test_the_postgres_async_store_implements_the_whole_face() -> None:
    assert not AsyncPostgresStore.__abstractmethods__
    assert issubclass(AsyncPostgresStore, AsyncStore)
