"""Evaluations (admin): evaluate a registered student against its base on demand.

The work happens in the trainer worker; these routes validate and queue an evaluation and read
its figures (means with 95% intervals, student − base, win rate, collapse check, promotion gate).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from services.teacher.deps import DbSession, State
from shared.db.queue import RunStatus
from shared.distillation.config import EvaluationRequest
from shared.distillation import evaluation_queue
from shared.web.auth import AdminScope
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/admin/evaluations", tags=["evaluations"], route_class=AuthFirstRoute,
                   responses=error_responses(503))


@router.post("", status_code=202, responses=error_responses(404))
def create(config: EvaluationRequest, _scope: AdminScope, state: State) -> dict[str, Any]:
    """Validate and queue an evaluation of `student_id`; 202 with its id. A trainer worker runs it."""
    run = evaluation_queue.submit(state.sessions, state.settings, config)
    return {"id": run.id, "status": run.status, "student_id": run.student_id, "task": run.task_name}


@router.get("")
def list_evaluations(
    _scope: AdminScope,
    session: DbSession,
    student_id: str | None = None,
    status: RunStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    runs = evaluation_queue.list_evaluations(session, student_id=student_id, status=status, limit=limit)
    return {"data": [evaluation_queue.evaluation_view(run) for run in runs]}


@router.get("/{evaluation_id}", responses=error_responses(404))
def show(evaluation_id: str, _scope: AdminScope, session: DbSession) -> dict[str, Any]:
    return evaluation_queue.evaluation_view(evaluation_queue.get_evaluation(session, evaluation_id))


@router.post("/{evaluation_id}/cancel", responses=error_responses(404, 409))
def cancel_evaluation(evaluation_id: str, _scope: AdminScope, state: State) -> dict[str, Any]:
    return evaluation_queue.evaluation_view(evaluation_queue.cancel(state.sessions, evaluation_id))
