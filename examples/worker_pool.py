"""A multi-process worker pool: ``ProcessPoolExecutor`` jobs call an API with one grant through requests.

    python examples/worker_pool.py --store sqlite:///var/lib/app/grants.db --grant acme-prod \\
        --url https://api.acme.example/v1/things --processes 4 --jobs 40

Each worker process opens its own `Keeper` on the shared store (a keeper is not shared across processes; the
store is). The store's lease makes one process refresh while the others wait for its commit, so the
provider sees one refresh per expiry however many processes need a token. Prints one JSON line with the
status counts; exits 1 unless every job succeeded.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import requests

from grantkeeper import GrantkeeperError, Keeper
from grantkeeper.integrations.requests_auth import RequestsGrantAuth

# One keeper and one HTTP session per worker process, opened by the pool's initializer.
_session: requests.Session | None = None


def open_worker(store: str, grant: str) -> None:
    global _session  # noqa: PLW0603 (per-process state is what an initializer is for)
    keeper = Keeper.open(store)
    _session = requests.Session()
    _session.auth = RequestsGrantAuth(keeper, grant)
    atexit.register(keeper.close)


def job(url: str) -> str:
    assert _session is not None, "the pool initializer opens the session"
    try:
        return str(_session.get(url, timeout=10).status_code)
    except GrantkeeperError as exc:
        return exc.code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--grant", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args(argv)
    spawn = multiprocessing.get_context("spawn")  # no forked copies of open connections or threads
    with ProcessPoolExecutor(args.processes, mp_context=spawn, initializer=open_worker,
                             initargs=(args.store, args.grant)) as pool:  # fmt: skip
        statuses = Counter(pool.map(job, [args.url] * args.jobs))
    print(json.dumps({"example": "worker_pool", "statuses": statuses}))
    return 0 if set(statuses) == {"200"} else 1


if __name__ == "__main__":
    sys.exit(main())
