"""Distillation runs (admin): submit, list, show, cancel, and the run's report image.

The work happens in the trainer worker (`dsc trainer work`); these routes validate and queue a
run, and read what the worker writes (status, progress, metrics, artifacts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse

from services.teacher.deps import DbSession, IdempotencyKey, State
from shared.db.queue import RunStatus
from shared.distillation.config import DistillationConfig
from shared.distillation import runs
from shared.errors import NotFound
from shared.web.auth import AdminScope
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/admin/distillations", tags=["distillations"], route_class=AuthFirstRoute,
                   responses=error_responses(503))


@router.post("", status_code=202, responses=error_responses(404))
def create(config: DistillationConfig, _scope: AdminScope, state: State, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Validate and queue a run; 202 with its id. A trainer worker picks it up. A retry with the
    request's Idempotency-Key answers with the run the first request queued.

    **Data scope: by default a run trains on the pairs of every key that sampled the task**, so
    each tenant's prompts shape the student that all of them are served. Name `owners` (key ids,
    as jobs show them) or `jobs` to train on some tenants' pairs only."""
    run, replayed = runs.submit(state.sessions, state.settings, config, idempotency_key=idempotency_key)
    body = {"id": run.id, "status": run.status, "progress": run.progress, "lineage": run.lineage}
    headers = {"Location": f"/admin/distillations/{run.id}"} | ({"Idempotent-Replayed": "true"} if replayed else {})
    return JSONResponse(body, status_code=202, headers=headers)


@router.get("")
def list_runs(
    _scope: AdminScope,
    session: DbSession,
    status: RunStatus | None = None,
    task: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    return {"data": runs.run_views(session, runs.list_runs(session, status=status, task=task, limit=limit))}


@router.get("/{run_id}", responses=error_responses(404))
def show(run_id: str, _scope: AdminScope, session: DbSession) -> dict[str, Any]:
    return runs.run_views(session, [runs.get_run(session, run_id)])[0]


@router.post("/{run_id}/cancel", responses=error_responses(404, 409))
def cancel_run(run_id: str, _scope: AdminScope, state: State) -> dict[str, Any]:
    """A queued run is cancelled at once; a running one stops after its current step."""
    return runs.run_view(runs.cancel(state.sessions, run_id))


@router.get("/{run_id}/report.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}} | error_responses(404))
def report(run_id: str, _scope: AdminScope, session: DbSession) -> FileResponse:
    run = runs.get_run(session, run_id)
    path = Path(run.artifact_dir or "") / "report.png"
    if not run.artifact_dir or not path.is_file():
        raise NotFound(f"run {run_id} has no report yet (status {run.status}); it is written when the run succeeds")
    return FileResponse(path, media_type="image/png")
