"""SQLAlchemy 2 models: one schema for Postgres (deployments) and SQLite (embedded default)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, Interval, String, Text, TypeDecorator, UniqueConstraint, Index, false, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UtcDateTime(TypeDecorator):
    """A timestamp in UTC, aware on both sides. Postgres keeps the offset (timestamptz); SQLite
    keeps none and reads naive datetimes back, which every API answer would then show without a
    time zone: here they are written in UTC and read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _as_utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return self._as_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return self._as_utc(value)

    def coerce_compared_value(self, op, value):
        # `column - timedelta(...)` in SQL: the timedelta is an interval, not a timestamp to convert.
        return Interval() if isinstance(value, timedelta) else super().coerce_compared_value(op, value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType, datetime: UtcDateTime()}


class LeaseColumns:
    """The columns shared/db/queue.py claims, fences and finishes a row by: every table whose rows
    workers lease (job batches, distillation and evaluation runs)."""

    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, or final (queue.FINAL)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims so far; part of every fence
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Task(Base):
    """A critique→revise task: requests, reward spec, acceptance defaults, optional prompt set."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    critique_request: Mapped[str] = mapped_column(Text)
    revision_request: Mapped[str] = mapped_column(Text)
    reward: Mapped[dict[str, Any]]
    second_opinion: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    acceptance: Mapped[str] = mapped_column(String(16), default="improve")
    beta: Mapped[float] = mapped_column(Float, default=1.0)
    steps: Mapped[int] = mapped_column(Integer, default=1)
    prompts: Mapped[list[Any]] = mapped_column(default=list)
    eval_prompts: Mapped[list[Any]] = mapped_column(default=list)
    train_min_reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    distillation: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # recipe defaults (TaskSpec.distillation)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotentCreation:
    """Set when a request with an Idempotency-Key made the row (shared/db/idempotency.py): the key,
    scoped to its caller, and a digest of the request body."""

    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True, index=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Job(IdempotentCreation, Base):
    """One sampling request: a background job, a synchronous API call or a CLI run.

    A background job is cut into batches (JobBatch) when it is created; workers claim batches,
    not jobs (shared/db/job_queue.py), so many workers share one job. The job row keeps the
    progress every batch commit adds to, and the outcome.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16), default="job")  # job | sync | cli
    # The key id (shared/keys.py: the start of the key's SHA-256, never the key) of the caller that
    # created the job; its jobs and pairs are visible to that key and to admins only. NULL: CLI runs,
    # jobs from before owners were recorded, a teacher without keys — admins only.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    task_name: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prompts: Mapped[list[Any]] = mapped_column(default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    # Prompts per batch, fixed when the job was cut (None for sync and CLI runs, which have no batches).
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # the most claims of any one of its batches
    failures: Mapped[int] = mapped_column(Integer, default=0)  # failed batch tries, all batches together
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class JobBatch(LeaseColumns, Base):
    """Prompts [start, end) of a job: the unit job workers claim, each with its own lease (see queue.py).

    Statuses: queued, running (leased), succeeded (committed with its chains), failed (it failed
    jobs.max_failures times and failed its job). Batches of a job that ended keep their status and
    are never claimed again.
    """

    __tablename__ = "job_batches"
    __table_args__ = (
        UniqueConstraint("job_id", "start", name="uq_job_batches_job_start"),
        Index("ix_job_batches_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # Who committed it (the lease owner at commit time): lease_owner is cleared when a batch ends.
    committed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ChainRecord(Base):
    """A stored critique→revise trace for one (prompt, chain) of a job (the sampler's
    `shared.critique_revise.Chain`, written by `shared.db.store.record_chains`)."""

    __tablename__ = "chains"
    __table_args__ = (UniqueConstraint("job_id", "prompt_index", "chain_index", name="uq_chains_job_prompt_chain"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_name: Mapped[str] = mapped_column(String(64), index=True)
    prompt_index: Mapped[int] = mapped_column(Integer)
    chain_index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    initial_text: Mapped[str] = mapped_column(Text)
    initial_reward: Mapped[float] = mapped_column(Float)
    final_text: Mapped[str] = mapped_column(Text)
    final_reward: Mapped[float] = mapped_column(Float)
    accepted: Mapped[bool] = mapped_column(Boolean)
    acceptance: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Cut off at the job's max_tokens; None for chains stored before this was recorded.
    initial_truncated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    final_truncated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    steps: Mapped[list["ChainStep"]] = relationship(order_by="ChainStep.step_index", cascade="all, delete-orphan")


class ChainStep(Base):
    __tablename__ = "chain_steps"
    __table_args__ = (UniqueConstraint("chain_id", "step_index", name="uq_chain_steps_chain_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("chains.id", ondelete="CASCADE"), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    critique: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    reward: Mapped[float] = mapped_column(Float)
    accepted: Mapped[bool] = mapped_column(Boolean)
    truncated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class Pair(Base):
    """An accepted (prompt, improved answer) pair: the distillation data."""

    __tablename__ = "pairs"
    __table_args__ = (UniqueConstraint("job_id", "prompt_index", "chain_index", name="uq_pairs_job_prompt_chain"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("chains.id", ondelete="CASCADE"), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_name: Mapped[str] = mapped_column(String(64), index=True)
    prompt_index: Mapped[int] = mapped_column(Integer)
    chain_index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    reward_before: Mapped[float] = mapped_column(Float)
    reward_after: Mapped[float] = mapped_column(Float)
    reward_gain: Mapped[float] = mapped_column(Float, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The response was cut off at the job's max_tokens (None: stored before this was recorded).
    truncated: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Review (the console): an excluded pair stays stored, listed and exported with its flag and
    # reason, and never trains (services/trainer/data.py pair_query). Undoing clears all three.
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    excluded_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    excluded_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RunColumns(LeaseColumns):
    """What a queued piece of trainer work has besides its lease: its task, config, progress and results."""

    task_name: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class DistillationRun(RunColumns, IdempotentCreation, Base):
    """A queued/running/finished distillation; same lease pattern as jobs."""

    __tablename__ = "distillation_runs"
    __table_args__ = (Index("ix_distillation_runs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    artifact_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where its training pairs came from, fixed at submission (shared/distillation/lineage.py): round,
    # parent student, pairs per job and per sampling student. NULL for runs from before rounds.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)


class EvaluationRun(RunColumns, Base):
    """An on-demand evaluation of a student (or of the base model alone) against its base, run by a
    trainer worker; the trainer's own evaluation after each distillation is stored on the run."""

    __tablename__ = "evaluation_runs"
    __table_args__ = (Index("ix_evaluation_runs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    student_id: Mapped[str | None] = mapped_column(ForeignKey("students.id", ondelete="SET NULL"), nullable=True, index=True)


class Student(Base):
    """A registered distilled model; at most one active per task."""

    __tablename__ = "students"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_students_name_version"),
        # At most one active student per task, enforced by the database (a partial unique index).
        Index("uq_students_active_task", "task_name", unique=True, postgresql_where=text("active"), sqlite_where=text("active")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    merged_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("distillation_runs.id", ondelete="SET NULL"), nullable=True)
    # Distillation rounds: 1 for a student of pairs the teacher's model sampled; n + 1 for one whose
    # pairs a round-n student sampled (its parent).
    round: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("students.id", ondelete="SET NULL"), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class StudentReplica(Base):
    """What one student service process serves, as it last reported it: the registry shows which
    students are really served, and which failed to load, next to which are active."""

    __tablename__ = "student_replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid:nonce
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # by the database's clock (queue.database_now)
    loaded: Mapped[list[Any]] = mapped_column(default=list)  # student ids served now
    not_loaded: Mapped[dict[str, Any]] = mapped_column(default=dict)  # student id → why its load failed


class ConsoleSession(Base):
    """A login to the web console (services/teacher/console/sessions.py). The cookie holds a random
    secret; the database keeps only its SHA-256 (`id`) and the admin token sealed with a key derived
    from the secret, so neither a copy of the database nor of a cookie from before logout opens it."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256 of the cookie's secret
    sealed_token: Mapped[str] = mapped_column(Text)  # Fernet token of the admin token, keyed by the secret
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
