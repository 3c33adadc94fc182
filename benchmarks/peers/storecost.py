"""Store cost: durable refreshes per second, each library vs the raw commit rate of its store, same rounds.

One `ProviderSimulator` (rotation always, hour-long access tokens); per case a set of grants it issued, cycled
through with forced refreshes (every refresh is one POST plus what the library makes durable):

* grantkeeper on SQLite and on PostgreSQL (a private server from ``tests/pg_server.py``, as
  `benchmarks.bench_scale` starts it): ``keeper.refresh(name, force=True)``, two durable transactions (attempt
  before the request, generation+1 after it);
* Authlib and requests-oauthlib: their forced refresh with the persistence callback writing their SQLite
  table (one durable transaction);
* raw commit rates, the stores' floor: ``BEGIN IMMEDIATE; UPDATE grants ...; COMMIT`` on SQLite (WAL,
  ``synchronous=FULL``) and ``UPDATE ...; COMMIT`` on PostgreSQL (fsync and synchronous_commit on), one row
  of the grantkeeper schema per commit (`benchmarks.bench_scale`'s bare backends).

All cases run in the same interleaved rounds (`benchmarks._common.interleave`). Afterwards every grantkeeper
grant's generation must have advanced by exactly its refreshes and the simulator must have seen no error.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks._common import Sample, interleave, sim_provider
from benchmarks.bench_scale import KEY, RECOVERY_ENV, _environ, _per_op, _Postgres, _postgres_unavailable, _SQLite
from benchmarks.peers import LIBRARIES, library
from benchmarks.peers.base import Client, SimInfo
from grantkeeper import Keeper
from grantkeeper.keys import KEY_ENV
from grantkeeper.stores import open_store
from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["StoreCost", "measure"]

Backend = TypeVar("Backend", _SQLite, _Postgres)

GRANTS = 20  # per case, cycled through
PROVIDER = "sim"


@dataclass
class StoreCost:
    refreshes: dict[str, Sample]  # case -> ns per durable refresh (or per raw commit)
    postgres: str | None  # PostgreSQL settings, or why it was skipped
    ops: int
    rounds: int


def measure(quick: bool) -> StoreCost:
    ops, rounds, warmup = (3, 3, 1) if quick else (10, 21, 2)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="grantkeeper-bench-peers-")))
        stack.enter_context(_environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(tmp / "recovery")}))
        sim = stack.enter_context(ProviderSimulator(rotation="always", reuse_grace=0))
        cases: dict[str, Callable[[], float]] = {}
        keepers: list[tuple[Keeper, list[str], list[int]]] = []

        def keeper_case(label: str, keeper: Keeper, bare: Callable[[str], None], bare_label: str) -> None:
            stack.callback(keeper.close)
            keeper.add_provider(sim_provider(sim, PROVIDER))
            names = _import(keeper, sim, "gk")
            spent = [0]
            keepers.append((keeper, names, spent))
            cycle, bare_cycle = itertools.cycle(names), itertools.cycle(_import(keeper, sim, "bare"))

            def refresh() -> None:
                keeper.refresh(next(cycle), force=True)
                spent[0] += 1

            cases[f"grantkeeper {label}"] = _per_op(refresh, ops)
            cases[bare_label] = _per_op(lambda: bare(next(bare_cycle)), ops)

        path = tmp / "grantkeeper.db"
        keeper_case("sqlite", Keeper.open(f"sqlite://{path}"), _closing(stack, _SQLite(path)).update_commit,
                    "sqlite raw commit")  # fmt: skip
        for lib in LIBRARIES[1:]:
            cases[f"{lib} sqlite"] = _per_op(_peer_refresher(stack, lib, tmp, sim), ops)
        postgres = _postgres_unavailable()
        if postgres is None:
            from tests.pg_server import PostgresServer

            url = stack.enter_context(PostgresServer()).create_database("bench")
            backend = _closing(stack, _Postgres(url))
            postgres = backend.settings()
            keeper_case("postgres", Keeper(open_store(url, migrate=True)), backend.update_commit, "postgres raw commit")
        else:
            postgres = f"SKIPPED: {postgres}"
        results = interleave(cases, rounds=rounds, warmup=warmup)
        for keeper, names, spent in keepers:
            advanced = sum(keeper.store.get_grant(name).generation - 1 for name in names)
            if advanced != spent[0]:
                raise RuntimeError(f"store cost: generations advanced {advanced} for {spent[0]} refreshes")
        if sim.stats.errors:
            raise RuntimeError(f"store cost: the simulator saw errors {dict(sim.stats.errors)}")
    return StoreCost(results, postgres, ops, rounds)


def _import(keeper: Keeper, sim: ProviderSimulator, prefix: str) -> list[str]:
    names = [f"{prefix}-{i:02d}" for i in range(GRANTS)]
    for name in names:
        keeper.import_grant(name, provider=PROVIDER, refresh_token=sim.issue_grant())
    return names


def _closing(stack: ExitStack, backend: Backend) -> Backend:
    stack.callback(backend.close)
    return backend


def _peer_refresher(stack: ExitStack, lib: str, root: Path, sim: ProviderSimulator) -> Callable[[], None]:
    adapter = library(lib)
    location = adapter.create(root, sim)
    names: Iterator[str] = itertools.cycle([f"peer-{i:02d}" for i in range(GRANTS)])
    for i in range(GRANTS):
        adapter.add_grant(location, f"peer-{i:02d}", sim.issue_grant())
    client: Client = adapter.client(location, SimInfo.of(sim))
    stack.callback(client.close)
    return lambda: client.refresh(next(names))
