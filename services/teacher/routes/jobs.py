"""Jobs: many prompts sampled in the background by the job workers (services/teacher/worker.py).

A job belongs to the key that created it: another client key gets 404 for it (as if it did not
exist: a 403 would confirm the id), and lists only its own; admins see every job."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import defer

from services.teacher.deps import DbSession, IdempotencyKey, State
from services.teacher.limits import check_plan
from services.teacher.protocol import JobCreated, JobList, JobRequest, JobStatus, JobView
from shared.db.models import Job
from shared.db.idempotency import create_once, fingerprint, scoped_key
from shared.db.job_queue import add_job, cancel_job, unfinished_by_owner
from shared.errors import NotFound, Overloaded
from shared.sampling_run import plan_sample
from shared.web.auth import Caller, ClientCaller
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=AuthFirstRoute,
                   responses=error_responses(503))


def _load(session, job_id: str, caller: Caller) -> Job:
    job = session.get(Job, job_id, options=[defer(Job.prompts)])  # a job may hold 50k prompts
    if job is None or not caller.may_see(job.owner):
        raise NotFound(f"no job {job_id!r}", param="id")
    return job


def check_key_share(session, settings, key_id: str, new_prompts: int) -> None:
    """Overloaded (429) when one client key's unfinished jobs, or their prompts still to sample with
    the new job's, reach its share (teacher.max_jobs_per_key, teacher.max_prompts_per_key)."""
    jobs, waiting = unfinished_by_owner(session, key_id).get(key_id, (0, 0))
    limits = settings.teacher
    if jobs >= limits.max_jobs_per_key:
        raise Overloaded(f"this key has {jobs} unfinished jobs (max_jobs_per_key {limits.max_jobs_per_key})",
                         retry_after=limits.queue_full_retry_after_seconds)
    if waiting + new_prompts > limits.max_prompts_per_key:
        raise Overloaded(f"this key's unfinished jobs hold {waiting} prompts still to sample; {new_prompts} more would pass "
                         f"max_prompts_per_key {limits.max_prompts_per_key}", retry_after=limits.queue_full_retry_after_seconds)


@router.post("", status_code=202, response_model=JobCreated, responses=error_responses(404))
def submit(request: JobRequest, caller: ClientCaller, state: State, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Queue a job (inline prompts, or the task's prompt set when `prompts` is omitted) and answer
    at once; poll GET /v1/jobs/{id}. A job always stores its chains (`store` must not be false).
    A retry with the request's Idempotency-Key answers with the job the first request queued."""
    settings = state.settings

    def queue(session) -> Job:
        plan = plan_sample(session, request)
        check_plan(plan, settings, max_prompts=settings.teacher.max_job_prompts, count_setting="max_job_prompts")
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.kind == "job", Job.status == "queued"))
        if queued >= settings.teacher.max_queued_jobs:
            raise Overloaded(
                f"the job queue is full: {queued} jobs queued (max_queued_jobs {settings.teacher.max_queued_jobs})",
                retry_after=settings.teacher.queue_full_retry_after_seconds,
            )
        if caller.key_id is not None:
            check_key_share(session, settings, caller.key_id, len(plan.prompts))
        return add_job(session, task_name=plan.task.name, params=plan.job_params(), prompts=plan.prompts,
                       batch_size=settings.jobs.batch_size, owner=caller.key_id)

    job, replayed = create_once(state.sessions, Job, scoped_key(caller.key_id, idempotency_key),
                                fingerprint(request.model_dump(mode="json")), queue)
    created = JobCreated(id=job.id, status=job.status)
    headers = {"Location": f"/v1/jobs/{created.id}"} | ({"Idempotent-Replayed": "true"} if replayed else {})
    return JSONResponse(created.model_dump(), status_code=202, headers=headers)


@router.get("", response_model=JobList)
def list_jobs(
    caller: ClientCaller,
    session: DbSession,
    status: JobStatus | None = None,
    kind: Literal["job", "sync", "cli"] | None = None,
    task: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> JobList:
    """The caller's jobs (an admin: every job), newest first."""
    query = select(Job).options(defer(Job.prompts)).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if not caller.sees_all:
        query = query.where(Job.owner == caller.key_id)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if task is not None:
        query = query.where(Job.task_name == task)
    return JobList(data=[JobView.of(job) for job in session.scalars(query)])


@router.get("/{job_id}", response_model=JobView, responses=error_responses(404))
def show(job_id: str, caller: ClientCaller, session: DbSession) -> JobView:
    return JobView.of(_load(session, job_id, caller))


@router.post("/{job_id}/cancel", response_model=JobView, responses=error_responses(404, 409))
def cancel(job_id: str, caller: ClientCaller, state: State) -> JobView:
    """A queued job is cancelled at once; a running one stops claiming batches, and is cancelled
    once the batches in flight are committed (what was committed stays; at once when no batch of
    it is held). Cancelling a cancelled job is a no-op; a finished one is 409."""
    with state.sessions() as session, session.begin():
        _load(session, job_id, caller)  # another key's job is a 404, and stays uncancelled
        cancel_job(session, job_id)
    with state.sessions() as session:
        return JobView.of(_load(session, job_id, caller))
