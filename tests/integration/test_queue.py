"""The generic lease queue on SQLite and Postgres (over distillation runs; job batches: test_job_batches.py):
claims, expiry rescue, fencing, cancel."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from shared.db.models import DistillationRun as Run
from shared.db.queue import claim, fenced_update, finish, heartbeat, release, request_cancel
from shared.db.session import transaction


def _enqueue(db, n: int) -> list[str]:
    with transaction(db) as session:
        runs = [Run(task_name="sentiment") for _ in range(n)]
        session.add_all(runs)
        session.flush()
        return [run.id for run in runs]


def test_each_row_is_claimed_by_exactly_one_of_many_workers(db):
    ids = _enqueue(db, 6)
    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(lambda i: claim(db, Run, f"w{i}", 60), range(10)))
    got = [job.id for job in claimed if job is not None]
    assert sorted(got) == sorted(ids)  # every job once, the extra claims found nothing
    assert all(job.status == "running" and job.attempt == 1 for job in claimed if job is not None)


def test_expired_lease_is_rescued_and_the_stale_worker_is_fenced_out(db):
    _enqueue(db, 1)
    first = claim(db, Run, "stalled", lease_seconds=0.2)
    assert claim(db, Run, "other", 60) is None  # still leased
    time.sleep(0.4)
    second = claim(db, Run, "rescuer", 60)
    assert second.id == first.id and second.attempt == 2
    with transaction(db) as session:
        assert not fenced_update(session, Run, first.id, "stalled", first.attempt, progress={"phase": "stale"})
    assert not heartbeat(db, Run, first.id, "stalled", first.attempt, 60)
    assert heartbeat(db, Run, second.id, "rescuer", second.attempt, 60)
    assert finish(db, Run, second.id, "rescuer", second.attempt, "succeeded")
    with db() as session:
        run = session.get(Run, first.id)
        assert (run.status, run.lease_owner, run.progress) == ("succeeded", None, {})


def test_cancel_queued_is_immediate_and_running_is_requested(db):
    queued, running = _enqueue(db, 2)
    held = claim(db, Run, "w", 60)
    other = queued if held.id == running else running
    with transaction(db) as session:
        assert request_cancel(session, Run, other) == "cancelled"
        assert request_cancel(session, Run, held.id) == "running"
        assert request_cancel(session, Run, "missing") is None
    with db() as session:
        assert session.get(Run, held.id).cancel_requested


def test_clean_hand_backs_are_not_attempts_and_fence_out_the_worker_that_handed_back(db):
    """Rolling restarts hand a run back many times: its attempts do not grow (so trainer.max_attempts
    counts only workers that died), and the worker that let go cannot write to it any more."""
    [run_id] = _enqueue(db, 1)
    for restart in range(5):
        held = claim(db, Run, f"worker-{restart}", 60)
        assert (held.id, held.attempt) == (run_id, 1)
        assert release(db, Run, run_id, f"worker-{restart}", held.attempt)
    successor = claim(db, Run, "successor", 60)
    assert successor.attempt == 1
    with transaction(db) as session:  # the last worker that handed back has the same attempt number, not the lease
        assert not fenced_update(session, Run, run_id, "worker-4", 1, progress={"phase": "stale"})
    assert not release(db, Run, run_id, "worker-4", 1)
    assert finish(db, Run, run_id, "successor", successor.attempt, "succeeded")
