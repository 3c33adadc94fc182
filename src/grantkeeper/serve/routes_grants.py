"""The ``/v1/grants`` routes: tokens, forced refresh, rejected tokens, status, doctor and history."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import Scope

from grantkeeper._secrets import Secret
from grantkeeper.cli._render import grant_record
from grantkeeper.cli.diagnose import attempt_dict
from grantkeeper.serve.auth import Caller
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.models import (
    GrantSummary,
    Problem,
    RefreshResponse,
    RejectedRequest,
    RejectedResponse,
    TokenResponse,
)

__all__ = [
    "AUTH_PROBLEMS",
    "PROBLEM",
    "GrantName",
    "access",
    "admit",
    "broker_of",
    "grant_access",
    "router",
    "token_body",
]

GrantName = Annotated[str, Path(min_length=1, max_length=200, description="The grant's name.")]
#: How /openapi.json describes problem answers.
PROBLEM: dict[str, Any] = {"model": Problem, "content": {"application/problem+json": {}}}
AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {401: PROBLEM, 403: PROBLEM, 429: PROBLEM, 503: PROBLEM}
_GRANT_PROBLEMS: dict[int | str, dict[str, Any]] = {**AUTH_PROBLEMS, 404: PROBLEM, 409: PROBLEM, 500: PROBLEM,
                                                    502: PROBLEM, 504: PROBLEM}  # fmt: skip
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: `JSONResponse`'s encoding and headers (in its order) for a token answer, for the fast path's raw answer.
render_json = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
TOKEN_HEADERS = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in _NO_STORE.items()]

router = APIRouter(prefix="/v1")


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def grant_access(scope: str, action: str | None = None) -> Any:
    """A dependency: the caller, authenticated, rate-limited and allowed `scope` on the path's grant. With
    `action`, the request goes into the audit trail under that name (a route may set ``request.state.detail``,
    e.g. what it proxied, and ``fingerprint``/``generation`` of the token it used)."""

    async def dependency(request: Request, name: GrantName) -> Caller:
        return await admit(request.scope, broker_of(request), name, scope, action)

    return Depends(dependency)


async def admit(asgi: Scope, broker: Broker, name: str, scope: str, action: str | None) -> Caller:
    """`grant_access`'s check on the request of ASGI scope `asgi`, also run by `grantkeeper.serve.fastpath`.
    What the recorder needs goes into ``asgi["state"]``, the dict behind ``request.state``."""
    state = asgi.setdefault("state", {})
    state["grant"], state["action"] = name, action
    caller = await broker.auth.caller_of(asgi)
    state["caller"] = caller.name
    broker.auth.check(caller, scope, name)
    return caller


def access(scope: str) -> Any:
    """A dependency: the caller, authenticated, rate-limited and allowed `scope` (routes naming no grant)."""

    async def dependency(request: Request) -> Caller:
        broker = broker_of(request)
        caller = await broker.auth.caller(request)
        request.state.caller = caller.name
        broker.auth.check(caller, scope)
        return caller

    return Depends(dependency)


@router.get("/grants/{name}/token", response_model=TokenResponse, responses=_GRANT_PROBLEMS | {422: PROBLEM})
async def get_token(
    request: Request, name: GrantName, _caller: Annotated[Caller, grant_access("token", "token")],
    min_valid: Annotated[float | None, Query(ge=0, le=31_536_000, description="Seconds the token must stay valid; "
                                             "refreshes first if the current one would not.")] = None,
) -> JSONResponse:  # fmt: skip
    """A valid access token of grant NAME (refreshed once for every caller when needed). Scope: token."""
    return JSONResponse(await token_body(request.scope, broker_of(request), name, min_valid), headers=_NO_STORE)


async def token_body(asgi: Scope, broker: Broker, name: str, min_valid: float | None) -> dict[str, Any]:
    """`get_token`'s answer, also given by `grantkeeper.serve.fastpath` (`admit` has run: the state exists)."""
    served = await broker.token(name, min_valid=min_valid)
    fingerprint = broker.served_fingerprint(name, served)
    state = asgi["state"]
    state["fingerprint"], state["generation"] = fingerprint, served.generation
    return {"access_token": served.access_token.reveal(), "token_type": "Bearer", "expires_at": served.expires_at,
            "generation": served.generation, "fingerprint": fingerprint}  # fmt: skip


@router.post("/grants/{name}/refresh", response_model=RefreshResponse, responses=_GRANT_PROBLEMS)
async def post_refresh(
    request: Request, name: GrantName, _caller: Annotated[Caller, grant_access("refresh", "refresh")]
) -> JSONResponse:
    """Refresh grant NAME now, even if its access token is still valid. Returns fingerprints, no token. Scope:
    refresh."""
    broker = broker_of(request)
    before = broker.keeper.served(name)
    grant = await broker.keeper.refresh(name, force=True)
    request.state.fingerprint, request.state.generation = grant.access_fp, grant.generation
    record = grant_record(grant)
    body = {k: record[k] for k in ("name", "generation", "refresh_fp", "access_fp", "expires_at")}
    body["refreshed"] = before is None or grant.generation > before.generation
    return JSONResponse(body, headers=_NO_STORE)


@router.post("/grants/{name}/rejected", response_model=RejectedResponse, responses=_GRANT_PROBLEMS)
async def post_rejected(
    request: Request, name: GrantName, report: RejectedRequest,
    _caller: Annotated[Caller, grant_access("token", "rejected")],
) -> RejectedResponse:  # fmt: skip
    """Report that a resource server answered 401 to this access token of grant NAME: it is dropped everywhere and
    the next token request refreshes. Scope: token."""
    broker = broker_of(request)
    await asyncio.to_thread(broker.keeper.store.get_grant, name)  # an unknown grant is a 404, not "not current"
    token = Secret(report.access_token)
    request.state.fingerprint = broker.fingerprint(token)
    invalidated = await broker.keeper.report_rejected(name, token.reveal())
    return RejectedResponse(name=name, invalidated=invalidated)


@router.get("/grants", response_model=list[GrantSummary], responses=AUTH_PROBLEMS)
async def list_grants(request: Request, caller: Annotated[Caller, access("read")]) -> list[dict[str, Any]]:
    """The grants this caller may reach (names, states, fingerprints). Scope: read."""
    grants = await broker_of(request).keeper.grants()
    return [{**grant_record(g), "state": g.state.value} for g in grants if caller.allows_grant(g.name)]


@router.get("/grants/{name}", responses=_GRANT_PROBLEMS)
async def get_status(request: Request, name: GrantName,
                     _caller: Annotated[Caller, grant_access("read")]) -> dict[str, Any]:  # fmt: skip
    """Everything known about grant NAME: state, generation, fingerprints, lease, recent attempts (as
    ``grantkeeper status NAME --json``). Scope: read."""
    return (await broker_of(request).keeper.status(name)).as_dict()


@router.get("/grants/{name}/doctor", responses=_GRANT_PROBLEMS)
async def get_doctor(request: Request, name: GrantName,
                     _caller: Annotated[Caller, grant_access("read")]) -> dict[str, Any]:  # fmt: skip
    """Why grant NAME failed last, or that it is healthy (as ``grantkeeper doctor NAME --json``). Scope: read."""
    return (await broker_of(request).keeper.doctor(name)).as_dict()


@router.get("/grants/{name}/history", responses=_GRANT_PROBLEMS)
async def get_history(
    request: Request, name: GrantName, _caller: Annotated[Caller, grant_access("read")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:  # fmt: skip
    """Grant NAME's refresh attempts, newest first (as ``grantkeeper history NAME --json``). Scope: read."""
    return [attempt_dict(a) for a in await broker_of(request).keeper.history(name, limit=limit)]
