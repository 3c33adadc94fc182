"""Code that the DOT integration tests run in child processes.

``python -m tests.dot_workers STORE_URL GRANT force|plain`` refreshes once and prints the outcome as JSON (crash
tests run it with ``GRANTKEEPER_FAILPOINTS``); `check_dot` is how the multi-process test's workers
(`tests.workers.hammer`) judge each token they are served.
"""

from __future__ import annotations

import json
import sys
import time

import httpx

from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy

#: Request timeout well above DOT's response time on a loaded machine, so a slow answer is not mistaken for
#: an ambiguous one; the lease outlives it as the policy requires.
DOT_POLICY = RefreshPolicy(
    lease_ttl=5.0, request_timeout=2.0, wait_timeout=60.0, deadline=30.0, backoff_base=0.01, backoff_cap=0.05
)
#: A rejected token whose check took this long may have expired during the check itself (the keeper serves a
#: 2-second token for at least 1 second); such rejections are counted apart and do not fail the test.
LATE_CHECK = 0.5
#: How long a worker waits for the refresh that made DOT forget a token to be committed to the store.
SUPERSEDE_WAIT = 15.0


def refresh_once(url: str, grant: str, force: bool) -> dict[str, object]:
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        try:
            return {"generation": keeper.refresh(grant, force=force).generation}
        except GrantkeeperError as exc:
            return {"error": exc.code, "attempt_id": exc.attempt_id}


def _superseded(keeper: Keeper, grant: str, token: str) -> bool:
    """DOT deletes an access token when its grant is refreshed (rotation or not). Did a refresh replace `token`
    in the store? Waits for a refresh that DOT has answered but the refreshing worker has not committed yet."""
    deadline = time.monotonic() + SUPERSEDE_WAIT
    while time.monotonic() < deadline:
        current = keeper.store.get_grant(grant).access_token
        if current is not None and current.reveal() != token:
            return True
        time.sleep(0.05)
    return False


def check_dot(keeper: Keeper, http: httpx.Client, grant: str, token: str, resource_url: str, served: float) -> str:
    """Classify one use of a served token at the DOT-protected resource (a `tests.workers.Check`)."""
    response = http.get(resource_url, headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 200:
        return "resource_ok"
    reason = response.json().get("reason")
    late = time.monotonic() - served >= LATE_CHECK
    if reason == "unknown" and _superseded(keeper, grant, token):
        # Served just before another worker's refresh, checked just after it: DOT revoked it with the old
        # refresh token. The keeper could not have known; a caller reports such a 401 and asks again.
        return "resource_superseded"
    if reason == "expired" and late:
        return "resource_expired_late"
    return f"resource_rejected:{reason}"


if __name__ == "__main__":
    print(json.dumps(refresh_once(sys.argv[1], sys.argv[2], sys.argv[3] == "force")))
