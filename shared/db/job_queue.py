"""Background jobs as batches on the lease queue (queue.py), so many workers share one job.

A job is cut into batches of `batch_size` prompts when it is created, in the same transaction
(`add_job`): a job is never visible without its batches, and a later change of the batch-size
setting never re-cuts a job in flight. Workers claim BATCHES, each with its own lease and fence:

    claim_batch    the first claimable batch (queued, or running with an expired lease) of an
                   active job that is not cancel-requested, round-robin across owners (the key
                   whose jobs last had a batch started longest ago goes first, one never served
                   before all), then oldest job first, then by start: one tenant's 50,000-prompt
                   job does not starve another's; one owner's jobs drain in order. The job turns
                   running on its first claim.
    commit_batch   ONE transaction: the batch's fence (status succeeded), its chains and pairs
                   (idempotent, store.py), then the job's done/accepted. The job-row update
                   serialises the commits of one job, so the commit that leaves no batch
                   unfinished is the one that marks the job succeeded.
    hand_back      a worker that stops (shutdown, dead engine) releases its batch without counting
                   a failure or the claim; the job turns queued again when no other batch of it is held.
    record_failure a failed try counts on the batch (and on the job, for the record); the
                   jobs.max_failures-th failure of one batch fails the batch and the job.
    fail_job       a batch that cannot run (its task is gone, too many claims) fails the job.
    settle_cancelled  a cancel-requested job none of whose batches is held by a live lease
                   becomes cancelled (the cancel route, a worker that just let go of a batch of
                   it, and idle workers call it, so a dead holder delays it one lease at most).

Lock order (Postgres): a transaction that writes a batch row and its job row writes the batch
first, then the job; cancel and settle lock only job rows. So claims, commits and hand-backs of
one job never deadlock. Batches of a job that ended keep their status; they are never claimed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import case, exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from shared.db.models import Job, JobBatch, utcnow
from shared.db.queue import ACTIVE, Lease, LeaseLost, cancel_row, claim, database_now, fence, fenced_update, handed_back
from shared.db.store import Recorded, record_chains
from shared.critique_revise import Chain


def cut(total: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch of `total` prompts, `size` at a time."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def add_job(session: Session, *, task_name: str, params: dict[str, Any], prompts: list[str], batch_size: int,
            owner: str | None = None) -> Job:
    """A queued job of `owner` (a key id; None: the CLI, or open mode) and its batches (caller
    commits: both land together or not at all)."""
    job = Job(kind="job", owner=owner, task_name=task_name, status="queued", params=params, prompts=prompts, total=len(prompts),
              batch_size=batch_size)
    session.add(job)
    session.flush()
    now = utcnow()
    rows = [{"job_id": job.id, "start": start, "end": end, "created_at": now} for start, end in cut(len(prompts), batch_size)]
    session.execute(insert(JobBatch), rows)
    return job


def claim_batch(factory: sessionmaker[Session], owner: str, lease_seconds: float) -> JobBatch | None:
    """Lease the next batch to work on, or None when no active job has one free."""
    served = last_served_by_owner()
    candidates = (
        select(JobBatch.id)
        .join(Job, Job.id == JobBatch.job_id)
        .outerjoin(served, served.c.owner.is_not_distinct_from(Job.owner))  # jobs of no owner (admin) are one tenant
        .where(Job.status.in_(ACTIVE), Job.cancel_requested.is_(False))
        .order_by(served.c.at.asc().nulls_first(), Job.created_at, Job.id, JobBatch.start)
    )
    return claim(factory, JobBatch, owner, lease_seconds, candidates=candidates, on_claim=_start_job)


def last_served_by_owner():
    """Per owner of an active job: when a batch of its active jobs last started (the fair-share order)."""
    job = aliased(Job)
    return (
        select(job.owner.label("owner"), func.max(JobBatch.started_at).label("at"))
        .join(job, job.id == JobBatch.job_id)
        .where(job.status.in_(ACTIVE), JobBatch.started_at.is_not(None))
        .group_by(job.owner)
        .subquery("served")
    )


def unfinished_by_owner(session: Session, owner: str | None = None) -> dict[str | None, tuple[int, int]]:
    """Per owner (a key id; None for jobs of no key): its queued and running jobs and their prompts
    not yet sampled. What the per-key limits act on and /metrics shows; `owner` narrows it to one."""
    query = (select(Job.owner, func.count(), func.coalesce(func.sum(Job.total - Job.done), 0))
             .where(Job.kind == "job", Job.status.in_(ACTIVE)).group_by(Job.owner))
    if owner is not None:
        query = query.where(Job.owner == owner)
    return {key: (int(jobs), int(left)) for key, jobs, left in session.execute(query).all()}


def _start_job(session: Session, batch: JobBatch) -> bool:
    """In the claim's transaction: the job runs (once), and its attempt is its most-claimed batch's.
    False, rolling the claim back, when the job ended or was cancelled after the claim looked."""
    return _update_job(
        session, batch.job_id, Job.status.in_(ACTIVE), Job.cancel_requested.is_(False),
        status="running",
        started_at=func.coalesce(Job.started_at, utcnow()),
        attempt=case((Job.attempt < batch.attempt, batch.attempt), else_=Job.attempt),
    )


def _update_job(session: Session, job_id: str, *conditions: Any, **values: Any) -> bool:
    """UPDATE the job row WHERE id and `conditions`; False when no row matched."""
    result = session.execute(update(Job).where(Job.id == job_id, *conditions).values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def commit_batch(
    factory: sessionmaker[Session], lease: Lease, batch: JobBatch, *, task_name: str, acceptance: str, chains: Sequence[Chain]
) -> Recorded | None:
    """Store one batch's chains and pairs and add them to the job's progress, in one transaction,
    only while `lease` holds and the job is active. None (and nothing written) otherwise."""
    now = utcnow()
    try:
        with factory() as session, session.begin():
            # The fence first: it locks the batch row, so no rescuer can claim it mid-commit.
            if not fenced_update(session, JobBatch, lease.row_id, lease.owner, lease.attempt, status="succeeded",
                                 committed_by=lease.owner, lease_owner=None, lease_expires_at=None, finished_at=now):
                raise LeaseLost()
            recorded = record_chains(session, job_id=batch.job_id, task_name=task_name, acceptance=acceptance, traces=chains,
                                     prompt_offset=batch.start)
            if not _update_job(session, batch.job_id, Job.status.in_(ACTIVE),
                               done=Job.done + (batch.end - batch.start), accepted=Job.accepted + recorded.pairs):
                raise LeaseLost()  # failed or cancelled meanwhile: nothing more is written to it
            # This commit holds the job row's lock now, so the count sees every earlier commit.
            if _unfinished(session, batch.job_id) == 0:
                _update_job(session, batch.job_id, status="succeeded", finished_at=now)
            return recorded
    except LeaseLost:
        return None


def _unfinished(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(JobBatch).where(JobBatch.job_id == job_id, JobBatch.status != "succeeded"))


def _held(now: datetime):
    """A batch of the (enclosing) job is held by a live lease."""
    return exists().where(JobBatch.job_id == Job.id, JobBatch.status == "running", JobBatch.lease_expires_at >= now)


def hand_back(factory: sessionmaker[Session], lease: Lease, batch: JobBatch) -> bool:
    """Release the batch for another worker at once, counting no failure (shutdown, dead engine).
    The job shows queued again once none of its batches is held. False when the lease was lost."""
    with factory() as session, session.begin():
        if not fenced_update(session, JobBatch, lease.row_id, lease.owner, lease.attempt, **handed_back(JobBatch)):
            return False
        _update_job(session, batch.job_id, Job.status == "running", ~_held(database_now(session)), status="queued")
        return True


def record_failure(factory: sessionmaker[Session], lease: Lease, batch: JobBatch, message: str, *, max_failures: int) -> int | None:
    """Count a failed try of the batch; at `max_failures` the batch and its job fail. Returns the
    batch's failures so far, or None when the lease was lost (nothing counted)."""
    now = utcnow()
    with factory() as session, session.begin():
        failures = session.scalar(
            update(JobBatch)
            .where(fence(JobBatch, lease.row_id, lease.owner, lease.attempt))
            .values(failures=JobBatch.failures + 1, error=message)
            .returning(JobBatch.failures)
            .execution_options(synchronize_session=False)
        )
        if failures is None:
            return None
        job_values: dict[str, Any] = {"failures": Job.failures + 1, "error": message}
        if failures >= max_failures:
            fenced_update(session, JobBatch, lease.row_id, lease.owner, lease.attempt, status="failed", lease_owner=None,
                          lease_expires_at=None, finished_at=now)
            job_values.update(status="failed", finished_at=now,
                              error=f"{message}; giving up after this batch failed {failures} times (job_max_failures)")
        _update_job(session, batch.job_id, Job.status.in_(ACTIVE), **job_values)
        return failures


def fail_job(factory: sessionmaker[Session], lease: Lease, batch: JobBatch, error: str) -> bool:
    """Fail the batch and its job with `error` (no retry can help). False when the lease was lost."""
    now = utcnow()
    with factory() as session, session.begin():
        if not fenced_update(session, JobBatch, lease.row_id, lease.owner, lease.attempt, status="failed", error=error,
                             lease_owner=None, lease_expires_at=None, finished_at=now):
            return False
        _update_job(session, batch.job_id, Job.status.in_(ACTIVE), status="failed", error=error, finished_at=now)
        return True


def settle_cancelled(session: Session, job_id: str | None = None) -> list[str]:
    """Mark cancelled every running, cancel-requested job (or just `job_id`) none of whose batches
    is held by a live lease; returns their ids. Caller commits."""
    now = database_now(session)
    query = update(Job).where(Job.status == "running", Job.cancel_requested.is_(True), ~_held(now))
    if job_id is not None:
        query = query.where(Job.id == job_id)
    query = query.values(status="cancelled", finished_at=now).returning(Job.id).execution_options(synchronize_session=False)
    return list(session.scalars(query))


def cancel_job(session: Session, job_id: str) -> None:
    """POST /v1/jobs/{id}/cancel (caller commits): a queued job is cancelled at once; a running one
    stops claiming batches, and is cancelled as soon as no batch of it is held (at once when none
    is). 404 if unknown, 409 once it has finished."""
    cancel_row(session, Job, job_id, "job")
    session.flush()
    settle_cancelled(session, job_id)


def job_standing(factory: sessionmaker[Session], job_id: str) -> tuple[str, bool] | None:
    """(status, cancel_requested) of a job, or None when it is gone."""
    with factory() as session:
        row = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == job_id)).one_or_none()
        return None if row is None else (row[0], bool(row[1]))
