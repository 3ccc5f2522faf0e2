"""The job queue under the teacher's workers: sharing, fencing, retries, shutdown hand-back."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from sqlalchemy import select

from services.teacher.worker import JobWorker
from shared.db.job_queue import add_job, cancel_job, claim_batch, commit_batch
from shared.db.models import ChainRecord, Job, JobBatch, Pair
from shared.db.queue import Heartbeat, Lease
from shared.db.session import transaction
from shared.critique_revise import Chain, Step
from shared.sampling_run import RewardPool

MAX_TOKENS = 4
PARAMS = {"steps": 1, "chains": 1, "acceptance": "always", "beta": 1.0, "temperature": 0.7, "top_p": 1.0, "max_tokens": MAX_TOKENS, "seed": 5}


class CountingEngine:
    """The real engine, recording every prompt it is asked to answer first (a chain's x0)."""

    def __init__(self, engine) -> None:
        self.engine, self.name, self.model = engine, engine.name, engine.model
        self.initial = Counter()
        self._lock = threading.Lock()

    def generate(self, conversations, params):
        with self._lock:
            self.initial.update(conv[0]["content"] for conv in conversations if len(conv) == 1)
        return self.engine.generate(conversations, params)

    def close(self) -> None:
        pass


class BrokenEngine:
    """Fails the first `failures` calls (None: every call), then behaves like the real engine."""

    name, model = "broken", "broken"

    def __init__(self, engine, failures: int | None = None, on_call=None) -> None:
        self.engine, self.failures, self.calls, self.on_call = engine, failures, 0, on_call

    def generate(self, conversations, params):
        self.calls += 1
        if self.on_call:
            self.on_call()
        if self.failures is None or self.calls <= self.failures:
            raise RuntimeError(f"engine exploded (call {self.calls})")
        return self.engine.generate(conversations, params)

    def close(self) -> None:
        pass


def enqueue(sessions, prompts: list[str], batch_size: int = 2, **params) -> str:
    with transaction(sessions) as session:
        return add_job(session, task_name="sentiment", params={**PARAMS, **params}, prompts=prompts, batch_size=batch_size).id


def load(sessions, job_id: str) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def batches(sessions, job_id: str) -> list[JobBatch]:
    with sessions() as session:
        return list(session.scalars(select(JobBatch).where(JobBatch.job_id == job_id).order_by(JobBatch.start)))


def drain(worker: JobWorker) -> int:
    """run_once until nothing is left to claim; returns how many batches it took."""
    taken = 0
    while worker.run_once():
        taken += 1
    return taken


def stored(sessions, job_id: str) -> tuple[list[int], int, int]:
    with sessions() as session:
        indexes = sorted(session.scalars(select(ChainRecord.prompt_index).where(ChainRecord.job_id == job_id)))
        accepted = len(list(session.scalars(select(ChainRecord.id).where(ChainRecord.job_id == job_id, ChainRecord.accepted))))
        pairs = len(list(session.scalars(select(Pair.id).where(Pair.job_id == job_id))))
    return indexes, accepted, pairs


def test_two_workers_share_the_queue_and_process_each_prompt_once(make_state, postgres_url, tf_engine, waiter):
    engine = CountingEngine(tf_engine)
    state = make_state(postgres_url, engine, jobs={"batch_size": 2, "poll_seconds": 0.05})
    # One job of two batches that both workers race for, and a second one for whoever is free.
    sizes = {enqueue(state.sessions, [f"Review film {i} of job {j}." for i in range(n)]): n for j, n in enumerate((4, 2))}
    jobs = list(sizes)
    workers = [JobWorker(state, f"w{i}").start() for i in range(2)]
    try:
        waiter(lambda: all(load(state.sessions, job_id).status == "succeeded" for job_id in jobs), 300, "both jobs to succeed", 0.2)
    finally:
        state.stopping.set()
        for worker in workers:
            worker.join(60)
    # Every prompt answered exactly once across both workers, and stored exactly once.
    assert len(engine.initial) == 6 and set(engine.initial.values()) == {1}
    for job_id in jobs:
        job = load(state.sessions, job_id)
        indexes, accepted, pairs = stored(state.sessions, job_id)
        assert (job.done, job.total, job.attempt, job.failures) == (sizes[job_id], sizes[job_id], 1, 0)
        assert indexes == list(range(sizes[job_id])) and pairs == accepted == job.accepted
        rows = batches(state.sessions, job_id)
        assert [(b.start, b.end, b.status, b.attempt, b.lease_owner) for b in rows] == [
            (start, min(start + 2, sizes[job_id]), "succeeded", 1, None) for start in range(0, sizes[job_id], 2)
        ]  # leases released at commit
        assert {b.committed_by for b in rows} <= {worker.owner for worker in workers}


def _trace(prompt_index: int, accepted: bool = True) -> Chain:
    trace = Chain(prompt_index, 0, f"prompt {prompt_index}", "bad answer", -0.5)
    trace.steps.append(Step("be nicer", "good answer" if accepted else "bad answer", 0.5, accepted))
    trace.final_text, trace.final_reward = ("good answer", 0.5) if accepted else ("bad answer", -0.5)
    return trace


def test_a_stalled_worker_cannot_commit_after_a_rescue(make_state, db_url):
    """Worker A's lease on a batch expires mid-batch and B takes the batch over: A's late commit is
    fenced out (rolled back whole), B's commit lands, and a second commit of the same batch (a
    retry) is refused: each prompt is stored once and counted once."""
    state = make_state(db_url)
    job_id = enqueue(state.sessions, ["p0", "p1", "p2"])  # batches 0-2 and 2-3
    stalled = claim_batch(state.sessions, "A", lease_seconds=0.2)
    time.sleep(0.4)
    rescuer = claim_batch(state.sessions, "B", lease_seconds=60)
    assert rescuer.id == stalled.id and (rescuer.job_id, rescuer.start, rescuer.end, rescuer.attempt) == (job_id, 0, 2, 2)
    a, b = Lease(stalled.id, "A", stalled.attempt), Lease(rescuer.id, "B", rescuer.attempt)
    traces = [_trace(0), _trace(1, accepted=False)]

    assert commit_batch(state.sessions, a, stalled, task_name="sentiment", acceptance="always", chains=traces) is None
    assert stored(state.sessions, job_id) == ([], 0, 0) and load(state.sessions, job_id).done == 0

    first = commit_batch(state.sessions, b, rescuer, task_name="sentiment", acceptance="always", chains=traces)
    assert (first.chains, first.pairs) == (2, 1)
    assert commit_batch(state.sessions, b, rescuer, task_name="sentiment", acceptance="always", chains=traces) is None
    job = load(state.sessions, job_id)
    assert (job.status, job.done, job.accepted, job.attempt) == ("running", 2, 1, 2)  # batch 2-3 still to do
    assert stored(state.sessions, job_id) == ([0, 1], 1, 1)
    assert [(row.status, row.committed_by) for row in batches(state.sessions, job_id)] == [("succeeded", "B"), ("queued", None)]


def test_a_worker_resumed_after_its_job_ended_says_its_lease_was_lost(make_state, db_url, caplog):
    """A worker stopped while it held a batch (SIGSTOP, swapped out) wakes up after another worker
    rescued the batch and the job ended: it hands back nothing, writes nothing, and says that its
    lease was lost, before its heartbeat has had a chance to notice."""
    state = make_state(db_url)
    job_id = enqueue(state.sessions, ["p0"])
    stalled = claim_batch(state.sessions, "A", lease_seconds=0.2)
    time.sleep(0.4)
    rescuer = claim_batch(state.sessions, "B", lease_seconds=60)
    commit_batch(state.sessions, Lease(rescuer.id, "B", rescuer.attempt), rescuer, task_name="sentiment", acceptance="always",
                 chains=[_trace(0)])
    assert load(state.sessions, job_id).status == "succeeded"

    with caplog.at_level(logging.WARNING, logger="services.teacher.worker"), \
            Heartbeat(state.sessions, JobBatch, stalled.id, "A", stalled.attempt, lease_seconds=60) as beat:
        JobWorker(state, "A")._process(stalled, Lease(stalled.id, "A", stalled.attempt), beat)
        assert not beat.lost.is_set()  # the worker, not its heartbeat, found out
    assert f"job {job_id}: lease on batch 0-1 lost" in caplog.text
    assert [(row.status, row.committed_by, row.lease_owner) for row in batches(state.sessions, job_id)] == [("succeeded", "B", None)]
    assert load(state.sessions, job_id).status == "succeeded" and stored(state.sessions, job_id) == ([0], 1, 1)


def test_failed_batches_are_retried_then_the_job_fails_with_the_error(make_state, tmp_path, tf_engine):
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}", BrokenEngine(tf_engine), jobs={"max_failures": 2, "poll_seconds": 0.01})
    job_id = enqueue(state.sessions, ["Review a film."])
    assert JobWorker(state).run_once()
    job = load(state.sessions, job_id)
    assert (job.status, job.failures, job.done) == ("failed", 2, 0)
    assert "engine exploded" in job.error and "job_max_failures" in job.error
    assert job.finished_at is not None
    [batch] = batches(state.sessions, job_id)
    assert (batch.status, batch.failures, batch.lease_owner) == ("failed", 2, None) and "engine exploded" in batch.error
    assert stored(state.sessions, job_id) == ([], 0, 0)


def test_a_batch_that_fails_once_is_retried_and_the_job_succeeds(make_state, tmp_path, tf_engine):
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}", BrokenEngine(tf_engine, failures=1), jobs={"max_failures": 2, "poll_seconds": 0.01})
    job_id = enqueue(state.sessions, ["Review a film."])
    assert JobWorker(state).run_once()
    job = load(state.sessions, job_id)
    assert (job.status, job.failures, job.done) == ("succeeded", 1, 1)
    assert "engine exploded (call 1)" in job.error  # the failure stays on record
    indexes, accepted, pairs = stored(state.sessions, job_id)
    assert indexes == [0] and pairs == accepted == job.accepted


class FirstTryFailsEngine:
    """The real engine, except that the first try of every batch fails (a flaky remote model):
    a call that starts chains for prompts it has not seen fails once."""

    name, model = "first-try-fails", "first-try-fails"

    def __init__(self, engine) -> None:
        self.engine, self.failed, self.seen = engine, 0, set()

    def generate(self, conversations, params):
        initial = {conv[0]["content"] for conv in conversations if len(conv) == 1}
        if initial and not initial <= self.seen:
            self.seen |= initial
            self.failed += 1
            raise RuntimeError(f"remote model unavailable (failure {self.failed})")
        return self.engine.generate(conversations, params)

    def close(self) -> None:
        pass


def test_failures_are_counted_per_batch_not_over_the_whole_job(make_state, tmp_path, tf_engine):
    """Three batches that each fail once: more failures than job_max_failures over the job, but
    never that many for one batch, so the job succeeds; every failure stays on record."""
    engine = FirstTryFailsEngine(tf_engine)
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}", engine, jobs={"batch_size": 1, "max_failures": 2, "poll_seconds": 0.01})
    job_id = enqueue(state.sessions, ["Review a film.", "Review a play.", "Review a book."], batch_size=1)
    assert drain(JobWorker(state)) == 3
    job = load(state.sessions, job_id)
    assert (job.status, job.done, job.failures, engine.failed) == ("succeeded", 3, 3, 3), job.error
    assert [row.failures for row in batches(state.sessions, job_id)] == [1, 1, 1]
    assert "remote model unavailable (failure 3)" in job.error
    assert stored(state.sessions, job_id)[0] == [0, 1, 2]


def test_shutdown_mid_batch_hands_the_batch_back_to_the_queue(make_state, tmp_path, tf_engine):
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}")
    engine = BrokenEngine(tf_engine, failures=0, on_call=state.stopping.set)  # shutdown begins during the first call
    state.engine = engine
    state.rewards = RewardPool()
    job_id = enqueue(state.sessions, ["Review a film.", "Review a play."])
    assert JobWorker(state).run_once()
    job = load(state.sessions, job_id)
    assert (job.status, job.done, job.attempt, job.failures) == ("queued", 0, 1, 0)
    [batch] = batches(state.sessions, job_id)
    assert (batch.status, batch.lease_owner, batch.attempt, batch.failures) == ("queued", None, 0, 0)  # a clean hand-back is no attempt
    assert engine.calls == 1  # stopped after the phase in flight, not at the end of the batch
    assert stored(state.sessions, job_id) == ([], 0, 0)
    state.stopping.clear()
    assert claim_batch(state.sessions, "next", 60).id == batch.id  # claimable at once, no lease to wait out


def test_a_job_whose_workers_keep_dying_fails_after_job_max_attempts(make_state, tmp_path, tf_engine):
    """Two claims of a batch whose holders vanish (leases run out), then a third claim over the
    cap: the job fails with the reason instead of being resumed forever; the engine is never
    called for it."""
    engine = BrokenEngine(tf_engine, failures=0)
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}", engine, jobs={"max_attempts": 2})
    job_id = enqueue(state.sessions, ["Review a film."])
    for owner in ("dies-1", "dies-2"):
        assert claim_batch(state.sessions, owner, lease_seconds=0.05).job_id == job_id
        time.sleep(0.1)
    assert JobWorker(state).run_once()
    job = load(state.sessions, job_id)
    assert (job.status, job.attempt, job.done) == ("failed", 3, 0)
    assert "job_max_attempts" in job.error and "gave up after 2 attempts" in job.error and "batch 0-1" in job.error
    assert engine.calls == 0
    assert [(row.status, row.lease_owner) for row in batches(state.sessions, job_id)] == [("failed", None)]


def test_a_batch_that_fails_job_max_failures_times_fails_the_job_and_its_other_batches_wait_no_more(make_state, tmp_path, tf_engine):
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}", BrokenEngine(tf_engine), jobs={"max_failures": 2, "poll_seconds": 0.01})
    job_id = enqueue(state.sessions, ["Review a film.", "Review a play.", "Review a book."])
    worker = JobWorker(state)
    assert worker.run_once()
    assert not worker.run_once()  # batch 2-3 is not claimed: its job failed
    job = load(state.sessions, job_id)
    assert (job.status, job.failures, job.done) == ("failed", 2, 0) and "batch 0-2 failed" in job.error
    assert [(row.status, row.attempt) for row in batches(state.sessions, job_id)] == [("failed", 1), ("queued", 0)]


def test_cancel_while_a_batch_is_in_flight_commits_it_then_cancels_the_job(make_state, tmp_path, tf_engine):
    """The cancel arrives during the first batch's sampling: that batch is committed, the job is
    then cancelled by the worker, and no other batch of it is claimed."""
    state = make_state(f"sqlite:///{tmp_path / 'q.db'}")

    def cancel_once() -> None:
        if not cancelled:
            cancelled.append(True)
            with transaction(state.sessions) as session:
                cancel_job(session, job_id)

    cancelled: list[bool] = []
    state.engine, state.rewards = BrokenEngine(tf_engine, failures=0, on_call=cancel_once), RewardPool()
    job_id = enqueue(state.sessions, ["Review a film.", "Review a play.", "Review a book.", "Review a song."])
    worker = JobWorker(state)
    assert worker.run_once()
    job = load(state.sessions, job_id)
    assert (job.status, job.cancel_requested, job.done) == ("cancelled", True, 2) and job.finished_at is not None
    assert stored(state.sessions, job_id)[0] == [0, 1]
    assert not worker.run_once()
    assert [row.status for row in batches(state.sessions, job_id)] == ["succeeded", "queued"]


def test_a_cancelled_job_whose_batch_holder_died_is_cancelled_once_its_lease_runs_out(make_state, db_url):
    state = make_state(db_url, jobs={"poll_seconds": 0.01})
    job_id = enqueue(state.sessions, ["p0", "p1", "p2"])
    assert claim_batch(state.sessions, "dies", lease_seconds=0.3).start == 0
    with transaction(state.sessions) as session:
        cancel_job(session, job_id)
    job = load(state.sessions, job_id)
    assert (job.status, job.cancel_requested) == ("running", True)  # a live lease: its holder may still commit
    worker = JobWorker(state)
    assert not worker.run_once() and load(state.sessions, job_id).status == "running"
    time.sleep(0.4)
    assert not worker.run_once()  # nothing to claim; the idle worker settles the job
    assert load(state.sessions, job_id).status == "cancelled"
