"""Submitting, listing and showing on-demand evaluations: what POST/GET /admin/evaluations do, without HTTP.

An evaluation compares a registered student with its base model on a task's evaluation prompts
(EvaluationConfig). A trainer worker claims queued evaluations from the same lease queue as
distillations and runs them (services/trainer/evaluation_engines.py); the figures land on the evaluation
run. The student's promotion gate follows an evaluation only where it is at least as strict as the
run's own, and then the last submitted one (registry.record_evaluation); any other is a report.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import EvaluationRun, Student
from shared.db.queue import cancel_and_read, get_row, newest_rows
from shared.distillation.config import EvaluationConfig
from shared.distillation.runs import training_prompts
from shared.errors import InvalidRequest, NotFound, Overloaded
from shared.settings import Settings
from shared.tasks import get_task


def submit(sessions: sessionmaker[Session], settings: Settings, config: EvaluationConfig) -> EvaluationRun:
    with sessions() as session:
        if config.student_id is None:
            raise InvalidRequest("student_id is required: the registered student to evaluate", param="student_id")
        student = session.get(Student, config.student_id)
        if student is None:
            raise NotFound(f"no student {config.student_id!r}", param="student_id")
        task = get_task(session, config.task or student.task_name)
        prompts = config.prompts_for(task.name, task.eval_prompts)  # 400 now for a task without an evaluation set
        if student.run_id is not None:
            seen = [prompt for prompt in prompts if prompt in training_prompts(settings, student.run_id)]
            if seen:
                raise InvalidRequest(
                    f"{len(seen)} of the {len(prompts)} evaluation prompts are in student {student.name}-v{student.version}'s "
                    f"training data (e.g. {seen[0][:80]!r}): answers to them show what it memorised, not how it does on "
                    "prompts it never saw; evaluate on others", param="eval_prompts")
        queued = session.scalar(select(func.count()).select_from(EvaluationRun).where(EvaluationRun.status == "queued")) or 0
        if queued >= settings.distill.max_queued:
            raise Overloaded(f"{queued} evaluations are queued already (distill_max_queued); retry later",
                             retry_after=settings.distill.queue_full_retry_after_seconds)
    stored = config.model_copy(update={"task": task.name})
    with sessions() as session, session.begin():
        run = EvaluationRun(task_name=task.name, student_id=student.id, status="queued", config=stored.model_dump(mode="json"),
                            progress={"phase": "queued"}, metrics={})
        session.add(run)
        session.flush()
        return run


def get_evaluation(session: Session, evaluation_id: str) -> EvaluationRun:
    return get_row(session, EvaluationRun, evaluation_id, "evaluation")


def list_evaluations(session: Session, *, student_id: str | None = None, status: str | None = None,
                     limit: int = 50) -> list[EvaluationRun]:
    """The newest evaluations first."""
    return newest_rows(session, EvaluationRun, limit, student_id=student_id, status=status)


def cancel(sessions: sessionmaker[Session], evaluation_id: str) -> EvaluationRun:
    return cancel_and_read(sessions, EvaluationRun, evaluation_id, "evaluation")


def evaluation_view(run: EvaluationRun) -> dict[str, Any]:
    return {
        "id": run.id, "student_id": run.student_id, "task": run.task_name, "status": run.status,
        "cancel_requested": run.cancel_requested, "progress": run.progress, "metrics": run.metrics, "error": run.error,
        "config": run.config, "attempt": run.attempt, "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
