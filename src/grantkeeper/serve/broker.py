"""`Broker`: what the routes share: the keeper, who may ask, the audit trail, metrics and readiness checks.

Tokens come only from `AsyncKeeper.access_token` and `AsyncKeeper.refresh`; `Broker.token` adds the metadata the
API returns (`AsyncKeeper.served`) and the ``min_valid`` rule, nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from grantkeeper._exceptions import GrantkeeperError, StoreUnavailable, TransientError, UnknownGrant
from grantkeeper._secrets import Secret
from grantkeeper.engine.keeper import ServedToken
from grantkeeper.keepers import AsyncKeeper
from grantkeeper.serve.audit import AuditTrail
from grantkeeper.serve.auth import Authenticator
from grantkeeper.serve.errors import ServeError
from grantkeeper.serve.metrics import ServeMetrics
from grantkeeper.stores import SQLStore
from grantkeeper.stores.migrations import latest_version

__all__ = ["Broker", "Heartbeat", "ReadinessCheck"]

#: A readiness check: (ready?, one line saying why). Must not raise; must not hold a secret.
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]
_TRIES = 3


@dataclass
class Heartbeat:
    """Fresh while something beats at least every `max_age` seconds: the hook a background scheduler uses to make
    ``/readyz`` fail when it stops (``broker.add_check("scheduler", heartbeat.check)``)."""

    max_age: float
    last: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last = time.monotonic()

    async def check(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last
        return age <= self.max_age, f"last beat {age:.1f} s ago (limit {self.max_age:.0f} s)"


class Broker:
    def __init__(self, keeper: AsyncKeeper, *, store: SQLStore, backend: str, auth: Authenticator, audit: AuditTrail,
                 metrics: ServeMetrics) -> None:  # fmt: skip
        self.keeper, self.auth, self.audit, self.metrics = keeper, auth, audit, metrics
        self.store = store  # the keeper's store, as the SQL store it is (API keys, audit, provider reads)
        self._backend = backend
        self.draining = False
        self.checks: dict[str, ReadinessCheck] = {"store": self._store_ready, "key": self._key_ready}
        # grant -> (the token last served, its fingerprint): the keeper hands out the same `Secret` while the token
        # stays cached, so the fingerprint (an HMAC) is computed once per token, not per request.
        self._served_fps: dict[str, tuple[Secret, str]] = {}
        #: Told the name of each grant whose token is handed out (the scheduler keeps used grants hot).
        self.on_token: Callable[[str], None] | None = None

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Make ``/readyz`` also depend on `check` (a scheduler's heartbeat, say)."""
        self.checks[name] = check

    async def start(self) -> None:
        self.audit.start()

    async def stop(self) -> None:
        self.draining = True
        await self.audit.stop()

    # ------------------------------------------------------------------ tokens

    async def token(self, name: str, *, min_valid: float | None = None) -> ServedToken:
        """A token of grant `name` the keeper serves, valid at least `min_valid` more seconds if given."""
        forced = False
        for _ in range(_TRIES):
            await self.keeper.access_token(name)
            served = self.keeper.served(name)
            if served is None:
                continue  # dropped between the two calls (a 401 reported, another host's refresh): ask again
            if min_valid is None or served.serve_until - time.time() >= min_valid:
                if self.on_token is not None:
                    self.on_token(name)
                return served
            if forced:
                left = max(0.0, served.serve_until - time.time())
                raise ServeError(422, "min_valid_unsatisfiable", f"grant {name!r}: a fresh access token is valid for "
                                 f"{left:.0f} s, less than min_valid={min_valid:g}; ask for less")  # fmt: skip
            await self.keeper.refresh(name, force=True)
            forced = True
        raise TransientError(f"grant {name!r}: the access token changed under every try; retry", grant=name)

    def fingerprint(self, token: Secret) -> str:
        return self.store.fingerprint(token)

    def served_fingerprint(self, name: str, served: ServedToken) -> str:
        """`fingerprint` of the token `served` for grant `name`, remembered while that token is served."""
        kept = self._served_fps.get(name)
        if kept is not None and kept[0] is served.access_token:
            return kept[1]
        fingerprint = self.fingerprint(served.access_token)
        self._served_fps[name] = (served.access_token, fingerprint)
        return fingerprint

    async def doctor_class(self, error: GrantkeeperError) -> str | None:
        """The doctor's cause for the grant `error` is about, when the doctor can be asked at all."""
        if error.grant is None or isinstance(error, UnknownGrant | StoreUnavailable):
            return None
        try:
            return (await asyncio.wait_for(self.keeper.doctor(error.grant), timeout=2.0)).cause
        except (GrantkeeperError, TimeoutError):
            return None

    # ------------------------------------------------------------------ readiness

    async def _store_ready(self) -> tuple[bool, str]:
        try:
            version = await asyncio.to_thread(self.store.schema_version)
        except GrantkeeperError as exc:
            return False, f"store unreachable ({exc.code})"
        latest = latest_version(self._backend)
        if version != latest:
            return False, f"store schema version {version}, this grantkeeper needs {latest}: run 'grantkeeper migrate'"
        return True, f"reachable, schema version {version}"

    async def _key_ready(self) -> tuple[bool, str]:
        # The key opened the store at start (the store's key check); it must still be able to fingerprint.
        try:
            self.store.fingerprint(Secret("readiness probe"))
        except GrantkeeperError as exc:
            return False, f"encryption key not usable ({exc.code})"
        return True, "loaded"

    async def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        results: dict[str, dict[str, object]] = {}
        for name, check in self.checks.items():
            try:
                ok, detail = await asyncio.wait_for(check(), timeout=5.0)
            except TimeoutError:
                ok, detail = False, "no answer within 5 s"
            results[name] = {"ok": ok, "detail": detail}
        if self.draining:
            results["shutdown"] = {"ok": False, "detail": "shutting down: finishing requests in flight"}
        return all(r["ok"] for r in results.values()), results
