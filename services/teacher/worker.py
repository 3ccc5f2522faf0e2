"""Background job workers: threads in the teacher process that drain the shared job queue.

A worker claims a job (shared.db.queue: SKIP LOCKED on Postgres, BEGIN IMMEDIATE on SQLite), then
walks its prompts in batches of `job_batch_size`, starting at `job.done`:

    sample the batch        one sampler call (seed offset = batch start, so a retry repeats it)
    commit the batch        ONE transaction: fenced progress update + chains + pairs
    check cancel            between batches

A heartbeat thread renews the lease while the worker samples. A worker killed mid-batch loses
only the uncommitted batch: its lease expires, another worker (or the restarted teacher) claims
the job and resumes at `done`. A worker that stalled past its lease finds its fence gone at
commit time and rolls back, so nothing is written twice. A batch that raises counts as a
failure of that batch and is tried again; a batch that fails `job_max_failures` times fails the
job with the error recorded (the count is per batch: a committed batch starts it again, so a
long job on a flaky remote engine is not failed by failures spread over hours). `failures` on
the job row counts every failed try, for the record.

A dead engine (state.engine_died) is not the job's fault: the worker hands the job back at once,
without counting a failure, and claims nothing more until a new engine is in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.teacher.logs import job_id_var
from services.teacher.state import TeacherState
from shared.db.models import Job
from shared.db.queue import Heartbeat, Lease, claim, fenced_update, finish, release
from shared.db.session import is_sqlite
from shared.db.store import Recorded, record_chains
from shared.engines.base import dead_reason_of
from shared.errors import DscError
from shared.sampler import Chain
from shared.sampling import plan_from_job, run_plan
from shared.tasks import get_task

log = logging.getLogger(__name__)


class _LeaseLost(Exception):
    pass


class _Stopping(Exception):
    """The teacher is shutting down: abandon the batch in flight (it was not committed)."""


def commit_batch(
    sessions: sessionmaker[Session], lease: Lease, *, task_name: str, acceptance: str, chains: Sequence[Chain], start: int, end: int
) -> Recorded | None:
    """Write one batch's chains and pairs and advance the job's progress, all in one transaction,
    only while `lease` still holds. None (and nothing written) when the lease was lost."""
    try:
        with sessions() as session, session.begin():
            # The fence first: it takes the job row's lock, so no rescuer can claim mid-commit.
            if not fenced_update(session, Job, lease.row_id, lease.owner, lease.attempt, done=end):
                raise _LeaseLost()
            recorded = record_chains(session, job_id=lease.row_id, task_name=task_name, acceptance=acceptance, traces=chains, prompt_offset=start)
            if recorded.pairs:
                session.execute(
                    update(Job).where(Job.id == lease.row_id).values(accepted=Job.accepted + recorded.pairs).execution_options(synchronize_session=False)
                )
            return recorded
    except _LeaseLost:  # the transaction rolled back: nothing of this batch was written
        return None


class JobWorker:
    """One worker thread. `run_once` claims and processes at most one job (tests drive it)."""

    def __init__(self, state: TeacherState, name: str = "job-worker") -> None:
        self.state = state
        self.name = name
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:8]}"
        self._thread: threading.Thread | None = None

    # --- thread ------------------------------------------------------------------------------

    def start(self) -> "JobWorker":
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        state = self.state
        while not state.stopping.is_set():
            if state.engine is None or state.check_engine() is not None:  # still loading, or dead
                state.stopping.wait(state.settings.job_poll_seconds)
                continue
            try:
                claimed = self.run_once()
            except Exception:  # never let one bad job kill the worker
                log.exception("job worker %s: unexpected error", self.name)
                claimed = False
            if not claimed:
                state.stopping.wait(state.settings.job_poll_seconds)

    # --- one job -----------------------------------------------------------------------------

    def run_once(self) -> bool:
        settings = self.state.settings
        job = claim(self.state.sessions, Job, self.owner, settings.job_lease_seconds)
        if job is None:
            return False
        lease = Lease(job.id, self.owner, job.attempt)
        token = job_id_var.set(job.id)
        try:
            log.info("claimed job %s (attempt %d, %d/%d done)", job.id, job.attempt, job.done, job.total)
            with Heartbeat(self.state.sessions, Job, lease.row_id, lease.owner, lease.attempt, settings.job_lease_seconds) as beat:
                self._process(job, lease, beat)
        finally:
            job_id_var.reset(token)
        return True

    def _process(self, job: Job, lease: Lease, beat: Heartbeat) -> None:
        state, settings, sessions = self.state, self.state.settings, self.state.sessions
        if job.attempt > settings.job_max_attempts:  # each holder died or stopped mid-job: a crash loop must end
            finish(sessions, Job, lease.row_id, lease.owner, lease.attempt, "failed",
                   error=f"gave up after {job.attempt - 1} attempts (job_max_attempts): each worker stopped before finishing the job")
            return
        try:
            with sessions() as session:
                task = get_task(session, job.task_name)
        except DscError as error:  # the task is gone: no retry can help
            finish(sessions, Job, lease.row_id, lease.owner, lease.attempt, "failed", error=error.message)
            return
        plan = plan_from_job(job, task)
        start, failures = job.done, job.failures
        batch_failures = 0  # failed tries of the batch at `start`
        while start < job.total:
            if beat.lost.is_set():
                return  # someone else holds the job now; our uncommitted work is simply dropped
            if state.stopping.is_set() or state.engine_dead is not None:
                release(sessions, Job, lease.row_id, lease.owner, lease.attempt)
                return
            if self._cancel_requested(lease.row_id):
                finish(sessions, Job, lease.row_id, lease.owner, lease.attempt, "cancelled")
                log.info("job %s cancelled at %d/%d", job.id, start, job.total)
                return
            end = min(start + settings.job_batch_size, job.total)
            try:
                with state.metrics.batch_seconds.time():
                    chains = run_plan(plan, state.engine, state.rewards, prompts=plan.prompts[start:end], seed_offset=start, progress=self._check_stop)
                recorded = commit_batch(sessions, lease, task_name=task.name, acceptance=plan.acceptance, chains=chains, start=start, end=end)
            except _Stopping:
                release(sessions, Job, lease.row_id, lease.owner, lease.attempt)
                return
            except Exception as error:
                if state.stopping.is_set():  # the engine was closed under the batch: not the job's fault
                    log.info("job %s: batch %d-%d stopped by shutdown (%s); handing the job back", job.id, start, end, error)
                    release(sessions, Job, lease.row_id, lease.owner, lease.attempt)
                    return
                if (dead := dead_reason_of(error) or state.check_engine()) is not None:  # nor is a dead engine
                    state.engine_died(dead)
                    log.warning("job %s: the engine died under batch %d-%d (%s); handing the job back", job.id, start, end, dead)
                    release(sessions, Job, lease.row_id, lease.owner, lease.attempt)
                    return
                failures += 1
                batch_failures += 1
                message = f"batch {start}-{end} failed: {getattr(error, 'message', None) or error!r}"
                log.warning("job %s: %s (failure %d of %d of this batch)", job.id, message, batch_failures, settings.job_max_failures,
                            exc_info=not isinstance(error, DscError))
                state.metrics.batches.labels("failed").inc()
                if batch_failures >= settings.job_max_failures:
                    finish(sessions, Job, lease.row_id, lease.owner, lease.attempt, "failed", failures=failures,
                           error=f"{message}; giving up after this batch failed {batch_failures} times (job_max_failures)")
                    return
                with sessions() as session, session.begin():
                    if not fenced_update(session, Job, lease.row_id, lease.owner, lease.attempt, failures=failures, error=message):
                        return
                state.stopping.wait(min(settings.job_poll_seconds * batch_failures, 30))
                continue
            if recorded is None:
                log.warning("job %s: lease lost before committing batch %d-%d; dropped it", job.id, start, end)
                return
            state.metrics.batches.labels("committed").inc()
            state.metrics.observe_chains(chains, "job")
            start, batch_failures = end, 0
        if finish(sessions, Job, lease.row_id, lease.owner, lease.attempt, "succeeded"):
            log.info("job %s succeeded", job.id)

    def _cancel_requested(self, job_id: str) -> bool:
        with self.state.sessions() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def _check_stop(self, _phase: str, _done: int, _total: int) -> None:
        if self.state.stopping.is_set():
            raise _Stopping()


def start_workers(state: TeacherState) -> list[JobWorker]:
    """Start `job_workers` threads; on SQLite one (a single claimer: SQLite has one writer)."""
    count = state.settings.job_workers
    if count > 1 and is_sqlite(state.db_engine):
        log.info("SQLite: running 1 job worker instead of %d (one writer)", count)
        count = 1
    return [JobWorker(state, f"job-worker-{i}").start() for i in range(count)]


def stop_workers(workers: list[JobWorker], timeout: float = 30.0) -> None:
    """Wait for workers to leave (the caller has set state.stopping; a batch in flight stops at its
    next sampler phase and hands its job back to the queue)."""
    for worker in workers:
        worker.join(timeout)
