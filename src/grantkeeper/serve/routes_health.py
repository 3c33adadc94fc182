"""``/livez``, ``/readyz`` (no key needed: probes) and ``/metrics`` (scope: metrics)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from grantkeeper.serve.auth import Caller
from grantkeeper.serve.metrics import EXPIRING_WINDOW
from grantkeeper.serve.models import Readiness
from grantkeeper.serve.routes_grants import AUTH_PROBLEMS, access, broker_of

__all__ = ["router"]

router = APIRouter()


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve tokens: store reachable with the current schema, key loaded, every registered check (a
    scheduler's heartbeat) fresh, not shutting down. 503 otherwise, saying which check failed."""
    ready, checks = await broker_of(request).readiness()
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, **AUTH_PROBLEMS})
async def metrics(request: Request, _caller: Annotated[Caller, access("metrics")]) -> Response:
    """Prometheus text exposition of this instance's metrics (docs/serve.md lists them). Scope: metrics."""
    broker = broker_of(request)
    await asyncio.to_thread(broker.metrics.refresh_store_gauges)
    broker.metrics.expiring.set(len(await broker.keeper.expiring(EXPIRING_WINDOW)))
    return Response(broker.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
