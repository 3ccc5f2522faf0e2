"""The student registry: every finished run registers a student version; promotion makes one
student the active one of its task, atomically.

The promotion gate: a student's evaluation decides whether it may be promoted as it is (a
significant gain over its base, no collapse or degeneration, no significant loss on the second
opinion or against the task's active student; services/trainer/evaluation_figures.py, gate), and promotion
checks that the active student it was measured against is still the active one. One that may not
is still registered and listed with the reason; promoting it takes an explicit force, whose reason
is kept.

Serving state: each student service process reports what it serves and what failed to load
(`report_serving`, on every change and at least every REPORT_EVERY_S); the registry's views show,
next to `active`, which live replicas serve a student and why others could not load it.

Atomic promotion: the task's student rows are locked (FOR UPDATE on Postgres; SQLite's
BEGIN IMMEDIATE already serialises writers), every other student of the task is deactivated and
the chosen one activated in the same transaction. A partial unique index (one active row per
task) makes a second active student impossible even if some other writer gets it wrong.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import DistillationRun, EvaluationRun, Student, StudentReplica, utcnow
from shared.db.queue import database_now
from shared.db.session import transaction
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.model_store import merged_model, resolve_model


@dataclass(frozen=True)
class StudentWeights:
    """Where a registered student's weights are: its base and its adapter, or merged weights."""

    id: str
    model: str
    base_path: Path
    adapter_dir: Path | None = None
    merged_dir: Path | None = None

    def merged(self, store: Path) -> Path:
        """Plain model weights of the student: its own merged ones, else base + adapter merged once
        into the model store (merged/<id>, where every service that serves it finds them)."""
        if self.merged_dir is not None:
            return self.merged_dir
        if self.adapter_dir is None:
            raise InvalidRequest(f"student {self.id!r} has neither an adapter nor merged weights")
        return merged_model(self.base_path, self.adapter_dir, store, self.id)


def weights_of(student: Student, store: Path) -> StudentWeights:
    """Where `student`'s weights are (its base model resolved in `store`)."""
    return StudentWeights(student.id, f"{student.name}-v{student.version}", resolve_model(student.base_model, store),
                          Path(student.adapter_path) if student.adapter_path else None,
                          Path(student.merged_path) if student.merged_path else None)


def next_version(session: Session, name: str) -> int:
    """The student name's next version number (caller owns the transaction). On Postgres a lock per
    name, held to the commit, makes two runs of one name finishing together take turns instead of
    colliding on the unique (name, version) after all their training; SQLite serialises writers already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(f"student-version:{name}".encode())})
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
        round=(run.lineage or {}).get("round", 1),
        parent_id=(run.lineage or {}).get("parent_id"),
        active=False,
    )
    session.add(student)
    session.flush()
    return student


def lock_task(session: Session, task_name: str) -> None:
    """Lock the task's student rows, in id order in one statement, so concurrent promotions queue
    (Postgres; SQLite's BEGIN IMMEDIATE already serialises writers). Caller owns the transaction."""
    lock = select(Student.id).where(Student.task_name == task_name).order_by(Student.id)
    if session.get_bind().dialect.name == "postgresql":
        lock = lock.with_for_update()
    session.execute(lock).all()


def activate(session: Session, student: Student) -> Student:
    """Make `student` the one active student of its task. The caller owns the transaction and holds
    the task's lock (lock_task), having read `student` after taking it."""
    session.execute(
        update(Student).where(Student.task_name == student.task_name, Student.id != student.id, Student.active.is_(True))
        .values(active=False).execution_options(synchronize_session=False)
    )
    session.flush()
    if not student.active:
        student.active = True
        student.promoted_at = utcnow()
    return student


def promotion_gate(student: Student) -> dict[str, Any]:
    """The student's gate as its evaluation decided it; students registered before gates existed have none."""
    return (student.metrics or {}).get("gate") or {"promotable": False, "reason": "no evaluation figures"}


def incumbent_of(session: Session, task_name: str, *, excluding: str | None = None) -> Student | None:
    """The task's active student, unless that is `excluding` (a student is no incumbent to itself)."""
    active = session.scalar(select(Student).where(Student.task_name == task_name, Student.active.is_(True)))
    return None if active is None or active.id == excluding else active


def promotion_refusal(session: Session, student: Student) -> str | None:
    """Why `student` may not become its task's active student without force, or None: its gate
    (evaluation_figures.gate: a significant gain over the base, no collapse or degeneration, no significant
    loss on the second opinion or against the incumbent), and that the incumbent it was measured
    against is still the active student. Lock the task first (lock_task) so the answer holds."""
    gate = promotion_gate(student)
    if not gate["promotable"]:
        return gate["reason"]
    measured = gate.get("incumbent") or {}
    current = incumbent_of(session, student.task_name, excluding=student.id)
    if current is not None and current.id != measured.get("id"):
        against = f"against {measured['model']}" if measured else "with no active student"
        return (f"it was evaluated {against}, but {current.name}-v{current.version} is the active student now: evaluate it "
                "again (POST /admin/evaluations) to compare it with the incumbent")
    return None


def record_promotion(student: Student, refusal: str | None, reason: str | None, *, by: str) -> None:
    """Keep how the student was promoted: by whom (admin or auto_promote), whether force overrode
    a refusal (and which), and the caller's reason."""
    student.metrics = {**(student.metrics or {}), "promotion": {
        "at": utcnow().isoformat(), "by": by, "forced": refusal is not None, "overrode": refusal, "reason": reason}}


def promote(sessions: sessionmaker[Session], student_id: str, *, force: bool = False, reason: str | None = None) -> Student:
    """Make `student_id` the one active student of its task. One that promotion_refusal refuses
    needs `force`; the refusal it overrode and `reason` are kept with the student."""
    with sessions() as session, session.begin():
        student = session.get(Student, student_id)
        if student is None:
            raise NotFound(f"no student {student_id!r}", param="id")
        lock_task(session, student.task_name)
        # What was read before the lock may be stale: a promotion that held it meanwhile may have
        # deactivated this student, and trusting the old `active` would leave the task none.
        session.refresh(student)
        if student.active:
            return student
        refusal = promotion_refusal(session, student)
        if refusal is not None and not force:
            raise Conflict(f"student {student.name}-v{student.version} is not promotable: {refusal}. "
                           "Promote it anyway with force=true (and say why in reason).", param="force")
        record_promotion(student, refusal, reason, by="admin")
        return activate(session, student)


def auto_promote(session: Session, student: Student) -> str | None:
    """A distillation's auto_promote: activate the new student when nothing refuses it (caller owns
    the transaction); None when promoted, else the refusal, which is kept with the student."""
    lock_task(session, student.task_name)
    refusal = promotion_refusal(session, student)
    if refusal is None:
        record_promotion(student, None, None, by="auto_promote")
        activate(session, student)
    else:
        student.metrics = {**(student.metrics or {}), "auto_promote_refused": refusal}
    return refusal


def gate_refusal(student: Student, config: dict[str, Any]) -> str | None:
    """Why an evaluation (its stored EvaluationConfig) may not set the student's gate, or None when
    it is at least as strict as the run's own: the student's task, at least the run's K answers a
    prompt, the collapse check on. Training prompts never get this far: submission refuses them."""
    if config.get("task") != student.task_name:
        return f"it scores task {config.get('task')!r}, not the student's {student.task_name!r}"
    own = ((student.metrics or {}).get("eval") or {}).get("samples") or 1
    if int(config.get("samples") or 0) < own:
        return f"{config.get('samples')} answers a prompt, fewer than the {own} of the student's own evaluation"
    if not config.get("collapse_check", True):
        return "its collapse check was off"
    return None


def record_evaluation(session: Session, evaluation: EvaluationRun, figures: dict[str, Any]) -> None:
    """A finished on-demand evaluation, on its student (caller owns the transaction). It becomes the
    student's gate only where gate_refusal finds nothing and no evaluation submitted after it set the
    gate already: of concurrent evaluations of one student, the last submitted wins, whichever
    finishes last. Every other evaluation is kept as a report (latest_evaluation, `gating` false)."""
    student = session.get(Student, evaluation.student_id, with_for_update=True)  # concurrent finishes take turns
    if student is None:
        return
    metrics = dict(student.metrics or {})
    submitted = evaluation.created_at.isoformat()
    report = {"id": evaluation.id, "submitted_at": submitted, **comparisons(figures), "prompts": figures["prompts"],
              "samples": figures["samples"], "gate": figures["gate"]}
    refusal = gate_refusal(student, evaluation.config or {})
    current = metrics.get("gate_from") or {}
    if refusal is None and current.get("submitted_at", "") > submitted:
        refusal = f"evaluation {current['evaluation_id']}, submitted later, set the gate already"
    report.update(gating=refusal is None, not_gating_because=refusal)
    if refusal is None:
        metrics.update(gate=figures["gate"], gate_from={"evaluation_id": evaluation.id, "submitted_at": submitted}, gating_evaluation=report)
    metrics["latest_evaluation"] = report
    student.metrics = metrics


COMPARISONS = ("systems", "student_minus_base", "student_minus_incumbent", "incumbent", "second_opinion", "degeneration")


def comparisons(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures of an evaluation that the gate reads: each system's mean, student − base and
    student − incumbent, on the reward and the second opinion, and the degeneration check."""
    return {key: figures[key] for key in COMPARISONS if key in figures}


def gating_figures(student: Student) -> dict[str, Any]:
    """The comparisons of the evaluation that set the student's gate (its own, or a later strict one)."""
    metrics = student.metrics or {}
    return comparisons(metrics.get("gating_evaluation") or metrics.get("eval") or {})


def list_students(session: Session, *, task: str | None = None, active: bool | None = None,
                  limit: int | None = 100) -> list[Student]:
    """The newest students first."""
    query = select(Student).order_by(Student.created_at.desc()).limit(limit)
    if task is not None:
        query = query.where(Student.task_name == task)
    if active is not None:
        query = query.where(Student.active.is_(active))
    return list(session.scalars(query))


def active_students(session: Session) -> list[Student]:
    """The one active student of each task that has one: what the student service serves."""
    return list_students(session, active=True, limit=None)


REPORT_EVERY_S = 30.0  # a serving replica reports at least this often
REPLICA_GONE_S = 3 * REPORT_EVERY_S  # one not heard from for this long is gone (it crashed without saying so)


def report_serving(sessions: sessionmaker[Session], replica: str, loaded: list[str], not_loaded: dict[str, str]) -> None:
    """A student service process's serving state, stamped by the database's clock."""
    with transaction(sessions) as session:
        now = database_now(session)
        row = session.get(StudentReplica, replica)
        if row is None:
            session.add(StudentReplica(id=replica, started_at=now, seen_at=now, loaded=loaded, not_loaded=not_loaded))
        else:
            row.seen_at, row.loaded, row.not_loaded = now, loaded, not_loaded


def forget_replica(sessions: sessionmaker[Session], replica: str) -> None:
    """A replica that stops cleanly says so, rather than being counted until it goes stale."""
    with transaction(sessions) as session:
        session.execute(delete(StudentReplica).where(StudentReplica.id == replica))


def serving_state(session: Session, student_ids: list[str]) -> dict[str, dict[str, Any]]:
    """For each student: the live replicas that serve it, and the load errors of those that could not."""
    cutoff = database_now(session) - timedelta(seconds=REPLICA_GONE_S)
    replicas = session.scalars(select(StudentReplica).where(StudentReplica.seen_at >= cutoff)).all()
    return {sid: {"served_by": sorted(r.id for r in replicas if sid in r.loaded),
                  "load_errors": {r.id: r.not_loaded[sid] for r in replicas if sid in r.not_loaded}}
            for sid in student_ids}


def student_views(session: Session, students: list[Student]) -> list[dict[str, Any]]:
    """Registry entries with their serving state."""
    serving = serving_state(session, [student.id for student in students])
    run_ids = [student.run_id for student in students if student.run_id]
    lineage = dict(session.execute(select(DistillationRun.id, DistillationRun.lineage).where(DistillationRun.id.in_(run_ids))).all()) if run_ids else {}
    return [{**student_view(student, lineage.get(student.run_id)), "serving": serving[student.id]} for student in students]


def student_view(student: Student, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """`lineage`: its run's (shared/distillation/lineage.py): the jobs and samplers of its pairs."""
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
        "promotable": promotion_gate(student)["promotable"],
        "gate": promotion_gate(student)["reason"],
        "comparisons": gating_figures(student),
        "promotion": (student.metrics or {}).get("promotion"),
        "run_id": student.run_id,
        "round": student.round,
        "parent_id": student.parent_id,
        "lineage": {"jobs": lineage["jobs"], "pairs": lineage["pairs"], "sampled_by": lineage["sampled_by"]} if lineage else None,
        "active": student.active,
        "created_at": student.created_at,
        "promoted_at": student.promoted_at,
    }

