"""Hot path: the median cost of one call that needs a valid access token, each library vs a bare dict lookup.

Two sets of cases, all in the same interleaved rounds (`benchmarks._common.interleave`), each round a loop of
calls to one pre-bound callable with the garbage collector off (`benchmarks.bench_cached._sync_round`):

* **token only**: the step each library runs before every request, with the token already in memory and
  valid for an hour. Bare: `benchmarks.bench_cached.baseline` (dict lookup, clock read, comparison).
  grantkeeper: ``keeper.access_token(name)``. Authlib: ``session.ensure_active_token(session.token)`` then
  ``session.token["access_token"]`` (what its ``OAuth2Auth`` runs per request). requests-oauthlib:
  ``session._client.add_token(url, "GET")`` (what its ``OAuth2Session.request`` runs per request; it also
  builds the header, as it has no check without it).
* **per call as in the contention scenario**: ``client.token(name)`` (`benchmarks.peers.base.Client`): the
  peers load the token from their SQLite table and make the request through requests with the library's
  auth; grantkeeper calls ``access_token`` and makes the same request; bare: the dict lookup and the same
  request. The request goes to an in-process transport (`NullTransport`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from benchmarks import bench_cached
from benchmarks._common import Sample, interleave
from benchmarks.peers import LIBRARIES, library
from benchmarks.peers._peer import PeerClient
from benchmarks.peers.base import RESOURCE, Client, SimInfo, null_session
from benchmarks.peers.grantkeeper_lib import GrantkeeperClient
from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["HotPath", "measure"]

GRANT = "hot"
BARE = "bare dict lookup"


@dataclass
class HotPath:
    token_only: dict[str, Sample]  # library (or BARE) -> ns per call
    per_call: dict[str, Sample]
    calls: tuple[int, int]  # calls per round: token only, per call
    rounds: int


def _token_step(lib: str, client: Client) -> Callable[[str], object]:
    if isinstance(client, GrantkeeperClient):
        return client.keeper.access_token
    assert isinstance(client, PeerClient)
    session: Any = client.session(GRANT)
    if lib == "authlib":

        def authlib_step(_name: str) -> object:
            session.ensure_active_token(session.token)
            return session.token["access_token"]

        return authlib_step

    def oauthlib_step(_name: str) -> object:
        return session._client.add_token(RESOURCE, http_method="GET")

    return oauthlib_step


def measure(quick: bool) -> HotPath:
    calls, per_call_calls, rounds, warmup = (2_000, 200, 5, 1) if quick else (50_000, 2_000, 21, 2)
    with ProviderSimulator() as sim, tempfile.TemporaryDirectory(prefix="grantkeeper-bench-peers-") as tmp:
        clients: dict[str, Client] = {}
        try:
            for lib in LIBRARIES:
                adapter = library(lib)
                location = adapter.create(Path(tmp), sim)
                adapter.add_grant(location, GRANT, sim.issue_grant())
                clients[lib] = adapter.client(location, SimInfo.of(sim))
                token = clients[lib].token(GRANT)  # the one refresh; every timed call is then a cache hit
            calls_before = sim.stats.refresh_calls
            bench_cached.d[GRANT] = (token, time.time() + 3600)
            bare_http = null_session(requests.Session())

            def bare_call(name: str) -> object:
                token = bench_cached.baseline(name)
                return bare_http.get(RESOURCE, headers={"Authorization": f"Bearer {token}"})

            token_steps = {BARE: bench_cached.baseline} | {lib: _token_step(lib, c) for lib, c in clients.items()}
            per_call_steps = {BARE: bare_call} | {lib: c.token for lib, c in clients.items()}
            cases = {f"token:{k}": _round(fn, calls) for k, fn in token_steps.items()}
            cases |= {f"call:{k}": _round(fn, per_call_calls) for k, fn in per_call_steps.items()}
            results = interleave(cases, rounds=rounds, warmup=warmup)
            if sim.stats.refresh_calls != calls_before:
                raise RuntimeError("hot path: a timed call refreshed; the figures would not be cache hits")
        finally:
            for client in clients.values():
                client.close()
    return HotPath(
        token_only={k.removeprefix("token:"): v for k, v in results.items() if k.startswith("token:")},
        per_call={k.removeprefix("call:"): v for k, v in results.items() if k.startswith("call:")},
        calls=(calls, per_call_calls),
        rounds=rounds,
    )


def _round(fn: Callable[[str], object], calls: int) -> Callable[[], float]:
    return lambda: bench_cached._sync_round(fn, GRANT, calls)
