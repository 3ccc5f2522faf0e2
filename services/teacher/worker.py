"""Background job workers: threads in the teacher process that drain the shared job queue.

A job is cut into batches of `jobs.batch_size` prompts when it is created; workers claim BATCHES
(shared/db/job_queue.py over shared/db/queue.py: SKIP LOCKED on Postgres, BEGIN IMMEDIATE on
SQLite), so every worker of every teacher replica on one database works on the same job at once.
For each batch it claims, a worker does:

    sample the batch        one sampler call (seed offset = batch start, so a retry, by this
                            worker or another, repeats the same answers)
    commit the batch        ONE transaction: the batch's fence, chains + pairs, the job's progress;
                            the commit that leaves no batch unfinished marks the job succeeded

A heartbeat thread renews the batch's lease while the worker samples. A worker killed mid-batch
loses only that batch: its lease expires and another worker (or the restarted teacher) claims it.
A worker that stalled past its lease finds its fence gone at commit time and rolls back, so
nothing is written twice. A batch that raises counts a failure of that batch (and of the job,
for the record) and is tried again; the jobs.max_failures-th failure of one batch fails the job
with the error recorded, and its other batches are no longer claimed. A batch claimed more than
jobs.max_attempts times (each holder died or stopped) fails the job too.

Cancel: workers stop claiming a cancel-requested job's batches; one that holds a batch of it
commits that batch, then the job is cancelled once none of its batches is held (the cancel route
does it at once when none is; idle workers settle jobs whose holder died, after its lease).

A dead engine (state.engine_died) or a shutdown is not the batch's fault: the worker hands its
batch back at once, without counting a failure, and claims nothing more until a new engine is in.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from services.teacher.state import TeacherState
from shared.db.job_queue import claim_batch, commit_batch, fail_job, hand_back, job_standing, record_failure, settle_cancelled
from shared.db.models import Job, JobBatch
from shared.db.queue import ACTIVE, Heartbeat, Lease, get_row, worker_owner
from shared.db.outages import OutageLog, work_loop
from shared.db.session import is_sqlite, transaction
from shared.engines.base import dead_reason_of
from shared.errors import DscError
from shared.logs import log_ids
from shared.sampling_run import SamplePlan, plan_from_job, run_plan
from shared.tasks import get_task

log = logging.getLogger(__name__)

PLAN_CACHE = 4  # jobs whose prompts a worker keeps: a 50k-prompt job is read once, not per batch


class _Stopping(Exception):
    """The teacher is shutting down: abandon the batch in flight (it was not committed)."""


class JobWorker:
    """One worker thread. `run_once` claims and processes at most one batch (tests drive it)."""

    def __init__(self, state: TeacherState, name: str = "job-worker") -> None:
        self.state = state
        self.name = name
        self.owner = worker_owner(name)
        self.outage = OutageLog(log, f"job worker {name}", state.settings.jobs.poll_seconds)
        self._thread: threading.Thread | None = None
        self._plans: OrderedDict[str, SamplePlan] = OrderedDict()

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
        work_loop(self.run_once, stopping=state.stopping, poll_seconds=state.settings.jobs.poll_seconds, outage=self.outage,
                  paused=lambda: state.engine is None or state.check_engine() is not None)  # still loading, or dead

    # --- one batch ---------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim one batch and process it; False when there was none to claim."""
        settings = self.state.settings
        batch = claim_batch(self.state.sessions, self.owner, settings.jobs.lease_seconds)
        if batch is None:
            self._settle()  # cancel-requested jobs whose last holder died
            return False
        lease = Lease(batch.id, self.owner, batch.attempt)
        with log_ids(job_id=batch.job_id):
            log.info("claimed job %s batch %d-%d (attempt %d)", batch.job_id, batch.start, batch.end, batch.attempt)
            with Heartbeat(self.state.sessions, JobBatch, lease.row_id, lease.owner, lease.attempt, settings.jobs.lease_seconds) as beat:
                self._process(batch, lease, beat)
        return True

    def _process(self, batch: JobBatch, lease: Lease, beat: Heartbeat) -> None:
        state, settings, sessions = self.state, self.state.settings, self.state.sessions
        where = f"batch {batch.start}-{batch.end}"
        if batch.attempt > settings.jobs.max_attempts:  # each holder died or stopped mid-batch: a crash loop must end
            if not fail_job(sessions, lease, batch, f"{where}: gave up after {batch.attempt - 1} attempts (job_max_attempts): "
                                                    "each worker stopped before finishing it"):
                _lease_lost(batch, where)
            return
        try:
            plan = self._plan(batch.job_id)
        except DscError as error:  # the task is gone: no retry can help
            if not fail_job(sessions, lease, batch, error.message):
                _lease_lost(batch, where)
            return
        while True:
            if beat.lost.is_set():
                _lease_lost(batch, where)
                return  # someone else holds the batch now; our uncommitted work is simply dropped
            if state.stopping.is_set() or state.engine_dead is not None:
                self._hand_back(lease, batch, where)
                return
            standing = job_standing(sessions, batch.job_id)
            if standing is None or standing[0] not in ACTIVE or standing[1]:  # ended or cancel requested
                self._hand_back(lease, batch, where)
                self._settle(batch.job_id)
                return
            try:
                with state.metrics.batch_seconds.time(), state.sampling_engine(plan.student) as engine:
                    chains = run_plan(plan, engine, state.rewards, prompts=plan.prompts[batch.start:batch.end],
                                      seed_offset=batch.start, progress=self._check_stop, schedule=settings.teacher.sampler_schedule)
                recorded = commit_batch(sessions, lease, batch, task_name=plan.task.name, acceptance=plan.acceptance, chains=chains)
            except _Stopping:
                self._hand_back(lease, batch, where)
                return
            except Exception as error:
                if state.stopping.is_set():  # the engine was closed under the batch: not the batch's fault
                    log.info("job %s: %s stopped by shutdown (%s); handing it back", batch.job_id, where, error)
                    self._hand_back(lease, batch, where)
                    return
                if plan.student is not None and (dead := state.student_engines.dead_reason(plan.student)) is not None:
                    log.warning("job %s: the engine of student %s died under %s (%s); handing it back", batch.job_id,
                                plan.student, where, dead)  # the next claim builds it afresh
                    self._hand_back(lease, batch, where)
                    return
                if (dead := dead_reason_of(error) or state.check_engine()) is not None:  # nor is a dead engine
                    state.engine_died(dead)
                    log.warning("job %s: the engine died under %s (%s); handing it back", batch.job_id, where, dead)
                    self._hand_back(lease, batch, where)
                    return
                message = f"{where} failed: {getattr(error, 'message', None) or error!r}"
                state.metrics.batches.labels("failed").inc()
                failures = record_failure(sessions, lease, batch, message, max_failures=settings.jobs.max_failures)
                log.warning("job %s: %s (failure %s of %d of this batch)", batch.job_id, message, failures, settings.jobs.max_failures,
                            exc_info=not isinstance(error, DscError))
                if failures is None:
                    _lease_lost(batch, where)
                    return
                if failures >= settings.jobs.max_failures:
                    return  # the batch failed its job
                state.stopping.wait(min(settings.jobs.poll_seconds * failures, 30))
                continue
            if recorded is None:
                log.warning("job %s: lease lost or job ended before committing %s; dropped it", batch.job_id, where)
                return
            state.metrics.batches.labels("committed").inc()
            state.metrics.observe_chains(chains, "job")
            self._after_commit(batch.job_id)
            return

    def _hand_back(self, lease: Lease, batch: JobBatch, where: str) -> None:
        # A worker resumed after its lease ran out (stopped, swapped out) lands here too when the
        # job ended meanwhile: say so, or the lost lease would pass without a word.
        if not hand_back(self.state.sessions, lease, batch):
            _lease_lost(batch, where)

    def _after_commit(self, job_id: str) -> None:
        standing = job_standing(self.state.sessions, job_id)
        if standing is not None and standing[0] == "succeeded":
            log.info("job %s succeeded", job_id)
        elif standing is not None and standing[1]:
            self._settle(job_id)

    def _settle(self, job_id: str | None = None) -> None:
        with transaction(self.state.sessions) as session:
            cancelled = settle_cancelled(session, job_id)
        for cancelled_id in cancelled:
            log.info("job %s cancelled", cancelled_id)

    def _plan(self, job_id: str) -> SamplePlan:
        """The job's plan (params and all its prompts), read once per job and kept for its batches."""
        if job_id in self._plans:
            self._plans.move_to_end(job_id)
            return self._plans[job_id]
        with self.state.sessions() as session:
            job = get_row(session, Job, job_id, "job")
            task = get_task(session, job.task_name)
            plan = plan_from_job(job, task)
        self._plans[job_id] = plan
        if len(self._plans) > PLAN_CACHE:
            self._plans.popitem(last=False)
        return plan

    def _check_stop(self, _phase: str, _done: int, _total: int) -> None:
        if self.state.stopping.is_set():
            raise _Stopping()


def _lease_lost(batch: JobBatch, where: str) -> None:
    log.warning("job %s: lease on %s lost; dropped it", batch.job_id, where)


def start_workers(state: TeacherState) -> list[JobWorker]:
    """Start `jobs.workers` threads; on SQLite one (a single claimer: SQLite has one writer)."""
    count = state.settings.jobs.workers
    if count > 1 and is_sqlite(state.db_engine):
        log.info("SQLite: running 1 job worker instead of %d (one writer)", count)
        count = 1
    return [JobWorker(state, f"job-worker-{i}").start() for i in range(count)]


def stop_workers(workers: list[JobWorker], timeout: float = 30.0) -> None:
    """Wait for workers to leave (the caller has set state.stopping; a batch in flight stops at its
    next sampler phase and is handed back to the queue)."""
    for worker in workers:
        worker.join(timeout)
