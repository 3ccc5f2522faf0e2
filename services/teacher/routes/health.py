"""Health, readiness and Prometheus metrics: open, no auth.

/readyz tells an open caller only a reason code; the error behind it (which can name files, hosts
and URLs) is in the log, and in the body only for a caller presenting the admin token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.teacher.deps import State
from services.teacher.state import TeacherState
from shared.db.session import ping
from shared.web.auth import is_admin_request
from shared.web.routing import AuthFirstRoute

router = APIRouter(tags=["health"], route_class=AuthFirstRoute)


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


def _not_ready(state: TeacherState, dead: str | None, checks: dict[str, bool]) -> tuple[str, str | None]:
    """(reason code, the detail behind it or None)."""
    if dead is not None:
        return "engine_dead", f"the engine died: {dead}; {state.engine_death_action}"
    if not checks["engine"]:
        return ("engine_failed", state.engine_error) if state.engine_error else ("engine_loading", None)
    return "database_unavailable", None


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
    reason: str | None = None
    engine_error: str | None = None


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready; retry after Retry-After seconds"}})
def readyz(state: State, request: Request) -> JSONResponse:
    """200 once the engine is loaded and the database answers; 503 with Retry-After until then,
    and again once the engine has died, until a new one is in. `reason` says which:
    engine_loading, engine_failed, engine_dead or database_unavailable; with the admin token the
    body also carries `engine_error`, the error itself."""
    dead = state.check_engine()
    checks = {"engine": state.engine is not None and dead is None, "database": ping(state.db_engine)}
    body: dict = {"ready": all(checks.values()), "checks": checks}
    if body["ready"]:
        return JSONResponse(body)
    body["reason"], detail = _not_ready(state, dead, checks)
    if detail is not None and is_admin_request(request):
        body["engine_error"] = detail
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(state: State) -> PlainTextResponse:
    """Prometheus' text exposition format."""
    return PlainTextResponse(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
