"""Health, readiness and Prometheus metrics: open, no auth."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.teacher.deps import State
from shared.db.session import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: State) -> JSONResponse:
    """200 once the engine is loaded and the database answers; 503 with Retry-After until then,
    and again once the engine has died (`engine_error` says why) until a new one is in."""
    dead = state.check_engine()
    checks = {"engine": state.engine is not None and dead is None, "database": ping(state.db_engine)}
    body = {"ready": all(checks.values()), "checks": checks}
    if dead is not None:
        body["engine_error"] = f"the engine died: {dead}; {state.engine_death_action}"
    elif state.engine_error:
        body["engine_error"] = state.engine_error
    if body["ready"]:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics")
def metrics(state: State) -> Response:
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
