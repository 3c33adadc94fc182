"""A plain script: call an API with a grant's access token through ``httpx.Client``.

    python examples/sync_script.py --store sqlite:///var/lib/app/grants.db --grant acme-prod \\
        --url https://api.acme.example/v1/things --requests 10

The keeper refreshes when the token nears expiry (once, even if other scripts run at the same time) and, if
the API rejects the token with 401 ``invalid_token``, invalidates it and re-sends the request once.
Prints one JSON line with the status counts; exits 1 unless every request succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import httpx

from grantkeeper import GrantkeeperError, Keeper
from grantkeeper.integrations.httpx_auth import GrantAuth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store URL, e.g. sqlite:///path/grants.db")
    parser.add_argument("--grant", required=True, help="grant name in the store")
    parser.add_argument("--url", required=True, help="API URL to GET")
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args(argv)

    statuses: Counter[str] = Counter()
    with Keeper.open(args.store) as keeper, httpx.Client(auth=GrantAuth(keeper, args.grant), timeout=10) as client:
        for _ in range(args.requests):
            try:
                statuses[str(client.get(args.url).status_code)] += 1
            except GrantkeeperError as exc:  # typed, with evidence; never a token in the message
                statuses[exc.code] += 1
                print(f"grant {args.grant!r}: {exc.message}", file=sys.stderr)
    print(json.dumps({"example": "sync_script", "statuses": statuses}))
    return 0 if set(statuses) == {"200"} else 1


if __name__ == "__main__":
    sys.exit(main())
