"""Distillation runs (admin): submit, list, show, cancel, and the run's report image.

The work happens in the trainer worker (`dsc trainer work`); these routes validate and queue a
run, and read what the worker writes (status, progress, metrics, artifacts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from sqlalchemy import select

from services.teacher.deps import DbSession, State
from services.trainer.config import DistillationConfig
from services.trainer.runs import cancel, get_run, run_view, submit
from shared.db.models import DistillationRun, Student
from shared.errors import NotFound
from shared.web.auth import AdminScope

router = APIRouter(prefix="/admin/distillations", tags=["distillations"])

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _student_ids(session, run_ids: list[str]) -> dict[str, str]:
    if not run_ids:
        return {}
    return dict(session.execute(select(Student.run_id, Student.id).where(Student.run_id.in_(run_ids))).all())


@router.post("", status_code=202)
def create(config: DistillationConfig, _scope: AdminScope, state: State) -> dict[str, Any]:
    """Validate and queue a run; 202 with its id. A trainer worker picks it up."""
    run = submit(state.sessions, state.settings, config)
    return {"id": run.id, "status": run.status, "progress": run.progress}


@router.get("")
def list_runs(
    _scope: AdminScope,
    session: DbSession,
    status: RunStatus | None = None,
    task: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    query = select(DistillationRun).order_by(DistillationRun.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(DistillationRun.status == status)
    if task is not None:
        query = query.where(DistillationRun.task_name == task)
    runs = list(session.scalars(query))
    students = _student_ids(session, [run.id for run in runs])
    return {"data": [run_view(run, students.get(run.id)) for run in runs]}


@router.get("/{run_id}")
def show(run_id: str, _scope: AdminScope, session: DbSession) -> dict[str, Any]:
    run = get_run(session, run_id)
    return run_view(run, _student_ids(session, [run.id]).get(run.id))


@router.post("/{run_id}/cancel")
def cancel_run(run_id: str, _scope: AdminScope, state: State) -> dict[str, Any]:
    """A queued run is cancelled at once; a running one stops after its current step."""
    return run_view(cancel(state.sessions, run_id))


@router.get("/{run_id}/report.png", response_class=FileResponse)
def report(run_id: str, _scope: AdminScope, session: DbSession) -> FileResponse:
    run = get_run(session, run_id)
    path = Path(run.artifact_dir or "") / "report.png"
    if not run.artifact_dir or not path.is_file():
        raise NotFound(f"run {run_id} has no report yet (status {run.status}); it is written when the run succeeds")
    return FileResponse(path, media_type="image/png")
