"""Job batches on the lease queue, on SQLite and Postgres: a job is cut with its batches, batches are
claimed once each in job order, concurrent commits finish the job exactly once, cancel settles,
and migration 0003 cuts the jobs an 0002 database holds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import DateTime, column, create_engine, func, insert, select, table, text

from shared.db.job_queue import add_job, cancel_job, claim_batch, commit_batch, cut, hand_back
from shared.db.models import ChainRecord, Job, JobBatch, JsonType, utcnow
from shared.db.queue import Lease
from shared.db.session import alembic_config, make_engine, normalise_url, session_factory, transaction, upgrade
from shared.critique_revise import Chain, Step

PARAMS = {"steps": 1, "chains": 1, "acceptance": "always", "beta": 1.0, "temperature": 0.7, "top_p": 1.0, "max_tokens": 4, "seed": 1}


def _job(db, n: int, batch_size: int) -> str:
    with transaction(db) as session:
        return add_job(session, task_name="sentiment", params=PARAMS, prompts=[f"p{i}" for i in range(n)], batch_size=batch_size).id


def _traces(batch: JobBatch) -> list[Chain]:
    traces = []
    for local in range(batch.end - batch.start):
        trace = Chain(local, 0, f"p{batch.start + local}", "bad", -0.5)
        accepted = (batch.start + local) % 2 == 0
        trace.steps.append(Step("be nicer", "good" if accepted else "bad", 0.5, accepted))
        trace.final_text, trace.final_reward = ("good", 0.5) if accepted else ("bad", -0.5)
        traces.append(trace)
    return traces


def _commit(db, batch: JobBatch, owner: str):
    return commit_batch(db, Lease(batch.id, owner, batch.attempt), batch, task_name="sentiment", acceptance="always", chains=_traces(batch))


def test_a_job_is_cut_into_batches_with_it():
    assert cut(5, 2) == [(0, 2), (2, 4), (4, 5)] and cut(4, 4) == [(0, 4)] and cut(1, 8) == [(0, 1)]
    with pytest.raises(ValueError):
        cut(3, 0)


def test_batches_are_claimed_once_each_oldest_job_first(db):
    first, second = _job(db, 5, 2), _job(db, 2, 2)
    claimed = [claim_batch(db, "w", 60) for _ in range(5)]
    assert [(b.job_id, b.start, b.end) for b in claimed[:4]] == [(first, 0, 2), (first, 2, 4), (first, 4, 5), (second, 0, 2)]
    assert claimed[4] is None  # all four held
    with db() as session:
        job = session.get(Job, first)
        assert (job.status, job.attempt, job.batch_size) == ("running", 1, 2) and job.started_at is not None
        assert session.get(Job, second).status == "running"


def test_many_workers_commit_one_job_concurrently_and_the_last_commit_finishes_it(db):
    """Eight threads claim and commit the 12 batches of one job at once: every batch is taken once,
    every prompt stored once, progress adds up, and the job succeeds exactly when the last batch lands."""
    job_id = _job(db, 23, 2)
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        owner = f"w{worker}"
        while (batch := claim_batch(db, owner, 60)) is not None:
            assert _commit(db, batch, owner) is not None
            with lock:
                taken.append((owner, batch.start))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert sorted(start for _, start in taken) == list(range(0, 23, 2))
    with db() as session:
        job = session.get(Job, job_id)
        indexes = sorted(session.scalars(select(ChainRecord.prompt_index).where(ChainRecord.job_id == job_id)))
        accepted = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id, ChainRecord.accepted))
        committed_by = dict(session.execute(select(JobBatch.start, JobBatch.committed_by).where(JobBatch.job_id == job_id)).all())
    assert (job.status, job.done, job.accepted) == ("succeeded", 23, accepted) and job.finished_at is not None
    assert indexes == list(range(23)) and accepted == 12
    assert committed_by == {start: owner for owner, start in taken}


def test_an_expired_batch_is_rescued_and_its_first_holder_fenced_out(db):
    job_id = _job(db, 2, 2)
    stalled = claim_batch(db, "stalled", lease_seconds=0.2)
    assert claim_batch(db, "other", 60) is None
    time.sleep(0.4)
    rescuer = claim_batch(db, "rescuer", 60)
    assert rescuer.id == stalled.id and rescuer.attempt == 2
    assert _commit(db, stalled, "stalled") is None
    assert not hand_back(db, Lease(stalled.id, "stalled", stalled.attempt), stalled)
    assert _commit(db, rescuer, "rescuer") is not None
    with db() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.done, job.attempt) == ("succeeded", 2, 2)


def test_hand_back_requeues_the_job_only_when_no_batch_of_it_is_held(db):
    job_id = _job(db, 4, 2)
    a, b = claim_batch(db, "a", 60), claim_batch(db, "b", 60)
    assert hand_back(db, Lease(a.id, "a", a.attempt), a)
    with db() as session:
        assert session.get(Job, job_id).status == "running"  # b still works on it
    assert hand_back(db, Lease(b.id, "b", b.attempt), b)
    with db() as session:
        assert session.get(Job, job_id).status == "queued"
    assert claim_batch(db, "c", 60).start == 0  # at once, no lease to wait out


def test_cancel_queued_is_immediate_running_settles_when_no_batch_is_held(db):
    queued, held, idle = _job(db, 2, 2), _job(db, 2, 2), _job(db, 4, 2)
    with transaction(db) as session:
        cancel_job(session, queued)
    batch = claim_batch(db, "w", 60)  # the oldest active job: `held`
    other = claim_batch(db, "w", 60)
    assert (batch.job_id, other.job_id) == (held, idle)
    assert hand_back(db, Lease(other.id, "w", other.attempt), other)
    with transaction(db) as session:
        session.execute(text("UPDATE jobs SET status = 'running' WHERE id = :id"), {"id": idle})  # as after a crash: running, nothing held
    with transaction(db) as session:
        cancel_job(session, held)
        cancel_job(session, idle)
    with db() as session:
        states = {job_id: (session.get(Job, job_id).status, session.get(Job, job_id).cancel_requested) for job_id in (queued, held, idle)}
    assert states == {queued: ("cancelled", False), held: ("running", True), idle: ("cancelled", True)}
    assert claim_batch(db, "w2", 60) is None  # nothing of a cancel-requested or cancelled job is claimed
    assert _commit(db, batch, "w") is not None  # the batch in flight still lands (what was committed stays)


# --- migration 0002 → 0003 --------------------------------------------------------------------


_JOBS_0002 = table(
    "jobs", *(column(name) for name in ("id", "kind", "task_name", "status", "total", "done", "accepted", "cancel_requested", "attempt",
                                        "failures", "lease_owner")),
    column("params", JsonType), column("prompts", JsonType),
    *(column(name, DateTime(timezone=True)) for name in ("lease_expires_at", "created_at")),
)


def _insert_0002_job(connection, job_id: str, status: str, done: int, total: int, *, age_s: float, **extra) -> None:
    connection.execute(insert(_JOBS_0002).values(
        id=job_id, kind="job", task_name="sentiment", status=status, params=PARAMS, prompts=[f"p{i}" for i in range(total)],
        total=total, done=done, accepted=0, cancel_requested=False, attempt=extra.get("attempt", 0), failures=0,
        lease_owner=extra.get("lease_owner"), lease_expires_at=extra.get("lease_expires_at"), created_at=utcnow() - timedelta(seconds=age_s),
    ))


def test_migration_0003_cuts_the_active_jobs_of_an_0002_database(db_url, monkeypatch):
    monkeypatch.setenv("DSC_JOB_BATCH_SIZE", "3")
    config = alembic_config(db_url)
    command.upgrade(config, "0002")
    raw = create_engine(normalise_url(db_url))
    with raw.begin() as connection:
        _insert_0002_job(connection, "finished", "succeeded", 5, 5, age_s=40)
        _insert_0002_job(connection, "alldone", "running", 6, 6, age_s=30, attempt=1, lease_owner="died-before-finish")
        _insert_0002_job(connection, "halfway", "running", 4, 10, age_s=20, attempt=2, lease_owner="old-worker",
                         lease_expires_at=utcnow() + timedelta(seconds=60))
        _insert_0002_job(connection, "queued0", "queued", 0, 7, age_s=10)
    raw.dispose()

    upgrade(db_url)
    engine = make_engine(db_url)
    db = session_factory(engine)
    with db() as session:
        cuts = {job_id: [(b.start, b.end, b.status, b.attempt) for b in session.scalars(select(JobBatch).where(JobBatch.job_id == job_id).order_by(JobBatch.start))]
                for job_id in ("queued0", "halfway", "finished", "alldone")}
        jobs = {job.id: job for job in session.scalars(select(Job))}
    assert cuts == {
        "queued0": [(0, 3, "queued", 0), (3, 6, "queued", 0), (6, 7, "queued", 0)],
        "halfway": [(4, 7, "queued", 0), (7, 10, "queued", 0)],  # from `done`: the committed prompts stay committed
        "finished": [],
        "alldone": [],
    }
    assert (jobs["queued0"].batch_size, jobs["halfway"].batch_size, jobs["finished"].batch_size) == (3, 3, None)
    assert (jobs["halfway"].status, jobs["halfway"].done, jobs["halfway"].attempt) == ("running", 4, 2)
    assert jobs["alldone"].status == "succeeded" and jobs["alldone"].finished_at is not None

    # The half-done job resumes where it stood (it is the older one), then the queued one starts.
    claimed = [claim_batch(db, "new-worker", 60) for _ in range(3)]
    assert [(batch.job_id, batch.start) for batch in claimed] == [("halfway", 4), ("halfway", 7), ("queued0", 0)]
    with db() as session:
        assert session.get(Job, "halfway").attempt == 2  # its claims so far stay on record
    engine.dispose()
