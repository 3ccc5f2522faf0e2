"""The lease queue on SQLite and Postgres: claims, expiry rescue, fencing, cancel."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from shared.db.models import Job
from shared.db.queue import claim, fenced_update, finish, heartbeat, request_cancel
from shared.db.session import transaction


def _enqueue(db, n: int) -> list[str]:
    with transaction(db) as session:
        jobs = [Job(task_name="sentiment", prompts=["p"], total=1) for _ in range(n)]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def test_each_job_is_claimed_by_exactly_one_of_many_workers(db):
    ids = _enqueue(db, 6)
    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(lambda i: claim(db, Job, f"w{i}", 60), range(10)))
    got = [job.id for job in claimed if job is not None]
    assert sorted(got) == sorted(ids)  # every job once, the extra claims found nothing
    assert all(job.status == "running" and job.attempt == 1 for job in claimed if job is not None)


def test_expired_lease_is_rescued_and_the_stale_worker_is_fenced_out(db):
    _enqueue(db, 1)
    first = claim(db, Job, "stalled", lease_seconds=0.2)
    assert claim(db, Job, "other", 60) is None  # still leased
    time.sleep(0.4)
    second = claim(db, Job, "rescuer", 60)
    assert second.id == first.id and second.attempt == 2
    with transaction(db) as session:
        assert not fenced_update(session, Job, first.id, "stalled", first.attempt, done=1)
    assert not heartbeat(db, Job, first.id, "stalled", first.attempt, 60)
    assert heartbeat(db, Job, second.id, "rescuer", second.attempt, 60)
    assert finish(db, Job, second.id, "rescuer", second.attempt, "succeeded")
    with db() as session:
        job = session.get(Job, first.id)
        assert (job.status, job.lease_owner, job.done) == ("succeeded", None, 0)


def test_cancel_queued_is_immediate_and_running_is_requested(db):
    queued, running = _enqueue(db, 2)
    held = claim(db, Job, "w", 60)
    other = queued if held.id == running else running
    with transaction(db) as session:
        assert request_cancel(session, Job, other) == "cancelled"
        assert request_cancel(session, Job, held.id) == "running"
        assert request_cancel(session, Job, "missing") is None
    with db() as session:
        assert session.get(Job, held.id).cancel_requested
