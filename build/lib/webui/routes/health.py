"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`).

Readiness depends on Postgres only: with Redis down, uploads still succeed
(the file waits `queued` in Postgres and the reconciler enqueues it later) and
search still works, so taking every pod out of the Route would turn a queue
outage into a full outage. Redis is reported, not required.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from webui.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with anyio.fail_after(3):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"unavailable: {type(err).__name__}"
    try:
        with anyio.fail_after(3):
            await run_in_threadpool(state.redis.ping)
        checks["redis"] = "ok"
    except Exception as err:
        checks["redis"] = f"unavailable: {type(err).__name__}"
    ready = checks["database"] == "ok"
    status = "not ready" if not ready else ("ready" if checks["redis"] == "ok" else "degraded")
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)
