"""The student registry (admin): list distilled students, promote one to active for its task."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from services.teacher.deps import DbSession, State
from shared.distillation import registry
from shared.web.auth import AdminScope
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/admin/students", tags=["students"], route_class=AuthFirstRoute,
                   responses=error_responses(503))


@router.get("")
def list_students(
    _scope: AdminScope,
    session: DbSession,
    task: str | None = None,
    active: bool | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    students = registry.list_students(session, task=task, active=active, limit=limit)
    return {"data": registry.student_views(session, students)}


@router.post("/{student_id}/promote", responses=error_responses(404, 409))
def promote_student(
    student_id: str,
    _scope: AdminScope,
    state: State,
    force: bool = Query(False, description="Promote even when the promotion gate refuses it (409 otherwise); the refusal "
                        "it overrode is kept with the student."),
    reason: str | None = Query(None, max_length=500, description="Why (kept with the student, shown beside a forced promotion)."),
) -> dict[str, Any]:
    """Make this student the one active student of its task, when its gate allows it: a significant
    gain over the base, no collapse or degeneration, no significant loss on the second opinion or
    against the active student it was evaluated against (which must still be the active one). The
    student service follows within its poll interval: `GET /admin/students` shows in `serving` when
    it does, or why it could not."""
    promoted = registry.promote(state.sessions, student_id, force=force, reason=reason)
    with state.readers() as session:
        return registry.student_views(session, [promoted])[0]
