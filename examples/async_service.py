"""An asyncio service: many tasks call an API concurrently with one grant through ``httpx.AsyncClient``.

    python examples/async_service.py --store sqlite:///var/lib/app/grants.db --grant acme-prod \\
        --url https://api.acme.example/v1/things --tasks 50 --requests 5

All tasks share one `AsyncKeeper`: when the token nears expiry, or the API rejects it, the tasks that need a
new one wait for a single refresh. Prints one JSON line with the status counts; exits 1 unless all succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

import httpx

from grantkeeper import AsyncKeeper, GrantkeeperError
from grantkeeper.integrations.httpx_auth import GrantAuth


async def worker(client: httpx.AsyncClient, url: str, requests: int, statuses: Counter[str]) -> None:
    for _ in range(requests):
        try:
            statuses[str((await client.get(url)).status_code)] += 1
        except GrantkeeperError as exc:
            statuses[exc.code] += 1


async def serve(store: str, grant: str, url: str, tasks: int, requests: int) -> Counter[str]:
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=tasks)
    async with (
        await AsyncKeeper.open(store) as keeper,
        httpx.AsyncClient(auth=GrantAuth(keeper, grant), timeout=10, limits=limits) as client,
        asyncio.TaskGroup() as group,  # exits first: every task is done before the client and keeper close
    ):
        for _ in range(tasks):
            group.create_task(worker(client, url, requests, statuses))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--grant", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5, help="requests per task")
    args = parser.parse_args(argv)
    statuses = asyncio.run(serve(args.store, args.grant, args.url, args.tasks, args.requests))
    print(json.dumps({"example": "async_service", "statuses": statuses}))
    return 0 if set(statuses) == {"200"} else 1


if __name__ == "__main__":
    sys.exit(main())
