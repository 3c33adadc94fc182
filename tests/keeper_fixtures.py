"""Pytest plugin (loaded by tests/conftest.py): the `keeper` fixture over every face and store.

A plain test gets a `Keeper`. An ``async def`` test runs once per face: on `AsyncKeeper` itself, and on a
`Keeper` behind `SyncFace`, the same awaitable API; so one test body states a behaviour of both. The store
comes from `store_url` (memory, SQLite, PostgreSQL); a module narrows it by overriding `store_url`.

Async tests run on anyio's pytest plugin (``pytestmark = pytest.mark.anyio``), on asyncio: `AsyncKeeper`
is built on asyncio (its locks, `asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import pytest

from grantkeeper import AsyncKeeper, Keeper
from tests.helpers import FAST_POLICY, provider_for

T = TypeVar("T")

FACES = ("sync", "async")


class _Done(Generic[T]):
    """An awaitable that hands back a value already computed."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        yield from ()
        return self.value


class SyncFace:
    """A `Keeper` behind `AsyncKeeper`'s awaitable API, so one ``async def`` test body drives both faces.

    A method that is a coroutine on `AsyncKeeper` runs here at once, on the calling thread, the way sync code
    calls it; ``await`` hands back its result (an error is raised by the call itself). Other attributes
    (`store`, `worker`, ...) are the keeper's own. `sync` is the `Keeper`."""

    def __init__(self, keeper: Keeper) -> None:
        self.sync = keeper

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not inspect.iscoroutinefunction(getattr(AsyncKeeper, name, None)):
            return attr

        def call(*args: Any, **kwargs: Any) -> _Done[Any]:
            return _Done(attr(*args, **kwargs))

        return call


#: What an ``async def`` test's `keeper` is: either face, awaited the same way.
Face = SyncFace | AsyncKeeper


async def at_once(keeper: Face, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `calls` at once, as concurrent callers of `keeper`'s face are: each on its own thread for the sync
    face (started together at a barrier), each as its own task for the async face."""
    if isinstance(keeper, AsyncKeeper):
        return list(await asyncio.gather(*(call() for call in calls)))
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        done = list(pool.map(run, calls))
    return [await d for d in done]


@contextlib.asynccontextmanager
async def another_keeper(keeper: Face, url: str) -> AsyncIterator[Face]:
    """A second keeper of `keeper`'s face on the store at `url` (its own cache and worker id), as another
    process would have; closed at the end."""
    if isinstance(keeper, AsyncKeeper):
        async with await AsyncKeeper.open(url, policy=FAST_POLICY) as other:
            yield other
    else:
        with Keeper.open(url, policy=FAST_POLICY) as opened:
            yield SyncFace(opened)


async def add_grant_to(keeper: Face, sim: object, *, grant: str = "g", **provider_options: object) -> str:
    """`tests.helpers.add_grant` on either face: a provider for `sim` and grant `grant`; the refresh token."""
    refresh = str(sim.issue_grant())  # type: ignore[attr-defined]
    await keeper.add_provider(provider_for(sim, **provider_options))  # type: ignore[arg-type]
    await keeper.import_grant(grant, provider="sim", refresh_token=refresh)
    return refresh


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in mark.args[0] for mark in metafunc.definition.iter_markers("parametrize"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each ``async def`` test that uses `face` (through `keeper`) runs once per face, unless it picks one."""
    if (
        "face" in metafunc.fixturenames
        and inspect.iscoroutinefunction(metafunc.function)
        and not _parametrizes(metafunc, "face")
    ):
        metafunc.parametrize("face", FACES)


@pytest.fixture
def face() -> str:
    """The face of the keeper a test drives: "sync" in a plain test (``async def`` tests get both)."""
    return "sync"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def keeper(request: pytest.FixtureRequest, face: str, store_url: str) -> Iterator[Keeper | Face]:
    """The keeper under test on `store_url`, with FAST_POLICY: a `Keeper` in a plain test; in an ``async def``
    test `AsyncKeeper` (face "async") or a `Keeper` behind `SyncFace` (face "sync")."""
    if face == "async":
        yield request.getfixturevalue("async_keeper")
        return
    with Keeper.open(store_url, policy=FAST_POLICY) as opened:
        yield SyncFace(opened) if inspect.iscoroutinefunction(request.function) else opened


@pytest.fixture
async def async_keeper(store_url: str) -> AsyncIterator[AsyncKeeper]:
    """An `AsyncKeeper` on `store_url` with FAST_POLICY, opened and closed in the test's event loop."""
    async with await AsyncKeeper.open(store_url, policy=FAST_POLICY) as opened:
        yield opened
