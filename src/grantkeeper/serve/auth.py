"""Who is asking, and may they: API keys on TCP, the socket's file permissions on the Unix listener.

Order, for every route but ``/livez``, ``/readyz`` and ``/openapi.json``: authenticate (401 for no, unknown,
revoked or expired key, with ``WWW-Authenticate``), rate-limit the key (429 with ``Retry-After``), then authorize
(403 for a valid key without the route's scope or whose patterns do not match the grant). A grant's existence is
checked only after all three, so a caller learns nothing about grants it may not reach.

Requests on the Unix listener need no key, as with Vault Agent's listener: whoever can open the socket (mode 0660:
its owner and group) is trusted, with the grant patterns and scopes the configuration gives the socket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Scope

from grantkeeper._secrets import Secret
from grantkeeper.serve.apikeys import KeyCache
from grantkeeper.serve.errors import ServeError
from grantkeeper.serve.ratelimit import RateLimiter
from grantkeeper.stores import SQLStore
from grantkeeper.stores.access import grant_matches

__all__ = ["LISTENER_KEY", "UNIX_CALLER", "Authenticator", "Caller"]

#: The ASGI scope key the runner sets to the listener a request came in on ("tcp" or "unix").
LISTENER_KEY = "grantkeeper.listener"
UNIX_CALLER = "unix-socket"
_CHALLENGE = 'Bearer realm="grantkeeper"'


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: an API key (by name), or the Unix listener."""

    name: str
    grants: tuple[str, ...]
    scopes: frozenset[str]

    def allows_grant(self, grant: str) -> bool:
        return grant_matches(grant, self.grants)


def _unauthorized(detail: str, *, presented: bool) -> ServeError:
    challenge = _CHALLENGE + (', error="invalid_token"' if presented else "")
    return ServeError(401, "unauthorized", detail, headers={"www-authenticate": challenge})


class Authenticator:
    def __init__(self, store: SQLStore, limiter: RateLimiter, *, unix: Caller | None = None) -> None:
        self._keys, self._limiter, self._unix = KeyCache(store), limiter, unix

    async def caller(self, request: Request) -> Caller:
        return await self.caller_of(request.scope)

    async def caller_of(self, scope: Scope) -> Caller:
        """`caller` for an ASGI scope (the token fast path has no `Request`)."""
        if scope.get(LISTENER_KEY) == "unix" and self._unix is not None:
            return self._unix
        header = _authorization(scope)
        if header is None:
            raise _unauthorized("no API key: send 'Authorization: Bearer <key>' (grantkeeper apikey create)",
                                presented=False)  # fmt: skip
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <key>'", presented=True)
        return await self.caller_for_key(value.strip())

    async def caller_for_key(self, value: str) -> Caller:
        """The caller API key `value` is (the console's sign-in form presents one): 401 for an unknown, revoked
        or expired key, 429 over its rate limit."""
        presented = Secret(value)  # registered, so the redaction cuts it out of any log line while alive
        record = await self._keys.authenticate(presented.reveal())
        if record is None:
            raise _unauthorized("the API key is not known to this store", presented=True)
        if record.revoked_at is not None:
            raise _unauthorized(f"API key {record.name!r} was revoked", presented=True)
        if not record.usable(time.time()):
            raise _unauthorized(f"API key {record.name!r} has expired; create a new one", presented=True)
        wait = self._limiter.take(record.name)
        if wait is not None:
            raise ServeError(429, "rate_limited", f"API key {record.name!r} is over its rate limit; retry after "
                             f"{wait} s", headers={"retry-after": str(wait)})  # fmt: skip
        return Caller(record.name, record.grants, frozenset(record.scopes))

    @staticmethod
    def check(caller: Caller, scope: str, grant: str | None = None) -> None:
        if scope not in caller.scopes:
            raise ServeError(403, "forbidden", f"{_who(caller)} lacks the {scope!r} scope this route needs")
        if grant is not None and not caller.allows_grant(grant):
            raise ServeError(403, "forbidden", f"{_who(caller)} may not reach grant {grant!r}")


def _authorization(scope: Scope) -> str | None:
    """The first Authorization header, as ``request.headers.get`` gives it."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def _who(caller: Caller) -> str:
    return "the Unix socket listener" if caller.name == UNIX_CALLER else f"API key {caller.name!r}"
