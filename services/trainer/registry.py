"""The student registry: every finished run registers a student version; promotion makes one
student the active one of its task, atomically.

Atomic promotion: the task's student rows are locked (FOR UPDATE on Postgres; SQLite's
BEGIN IMMEDIATE already serialises writers), every other student of the task is deactivated and
the chosen one activated in the same transaction. A partial unique index (one active row per
task) makes a second active student impossible even if some other writer gets it wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import DistillationRun, Student, utcnow
from shared.errors import NotFound


def next_version(session: Session, name: str) -> int:
    return (session.scalar(select(func.max(Student.version)).where(Student.name == name)) or 0) + 1


def register_student(
    session: Session,
    run: DistillationRun,
    *,
    name: str,
    base_model: str,
    adapter_dir: Path | None,
    merged_dir: Path | None,
    metrics: dict[str, Any],
) -> Student:
    """Add the run's student (caller owns the transaction). A run registers at most one student."""
    existing = session.scalar(select(Student).where(Student.run_id == run.id))
    if existing is not None:
        return existing
    student = Student(
        name=name,
        version=next_version(session, name),
        task_name=run.task_name,
        base_model=base_model,
        adapter_path=str(adapter_dir) if adapter_dir else None,
        merged_path=str(merged_dir) if merged_dir else None,
        metrics=metrics,
        run_id=run.id,
        active=False,
    )
    session.add(student)
    session.flush()
    return student


def promote(sessions: sessionmaker[Session], student_id: str) -> Student:
    """Make `student_id` the one active student of its task."""
    with sessions() as session, session.begin():
        postgres = session.get_bind().dialect.name == "postgresql"
        student = session.get(Student, student_id)
        if student is None:
            raise NotFound(f"no student {student_id!r}", param="id")
        # Lock the whole task's rows in one statement, in id order, so concurrent promotions queue.
        lock = select(Student.id).where(Student.task_name == student.task_name).order_by(Student.id)
        if postgres:
            lock = lock.with_for_update()
        session.execute(lock).all()
        session.execute(
            update(Student).where(Student.task_name == student.task_name, Student.id != student.id, Student.active.is_(True))
            .values(active=False).execution_options(synchronize_session=False)
        )
        session.flush()
        if not student.active:
            student.active = True
            student.promoted_at = utcnow()
        return student


def student_view(student: Student) -> dict[str, Any]:
    return {
        "id": student.id,
        "name": student.name,
        "version": student.version,
        "model": f"{student.name}-v{student.version}",
        "task": student.task_name,
        "base_model": student.base_model,
        "adapter_path": student.adapter_path,
        "merged_path": student.merged_path,
        "metrics": student.metrics,
        "run_id": student.run_id,
        "active": student.active,
        "created_at": student.created_at,
        "promoted_at": student.promoted_at,
    }

