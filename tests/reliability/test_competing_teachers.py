"""Three teacher processes on one Postgres queue work through several jobs; one of them is stopped
(SIGSTOP) while it holds a batch, for longer than its lease, then resumed. Its batch is rescued by
another process, its late result is dropped (the fence), every prompt is stored exactly once, and
every job succeeds."""

from __future__ import annotations

import os
import signal

from sqlalchemy import func, select

from live_server import wait_for
from shared.db.models import ChainRecord, Job, JobBatch, Pair
from shared.db.session import make_engine, session_factory

JOBS, PROMPTS = 3, 5
LEASE_SECONDS = 4


def _owner_pid(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None  # owner = host:pid:worker:nonce


def test_three_teachers_and_a_stalled_one_store_every_prompt_once(services, postgres_url):
    launcher = services(postgres_url, job_batch_size=1, job_poll_seconds=0.1, job_lease_seconds=LEASE_SECONDS)
    teachers = [launcher.start("teacher", "serve", name=f"teacher-{i}") for i in range(3)]
    for teacher in teachers:
        launcher.wait_ready(teacher)
    db = make_engine(postgres_url)
    sessions = session_factory(db)
    try:
        with teachers[0].client() as client:
            job_ids = []
            for j in range(JOBS):
                prompts = [f"Write a harsh review of film {j}-{i}." for i in range(PROMPTS)]
                response = client.post("/v1/jobs", json={"task": "sentiment", "prompts": prompts, "acceptance": "always",
                                                         "max_tokens": 12, "seed": j})
                assert response.status_code == 202, response.text
                job_ids.append(response.json()["id"])

        by_pid = {teacher.pid: teacher for teacher in teachers}

        def a_batch_in_flight():
            with sessions() as session:
                row = session.execute(select(JobBatch.id, JobBatch.lease_owner, JobBatch.attempt)
                                      .where(JobBatch.status == "running", JobBatch.job_id.in_(job_ids))).first()
            return row if row is not None and _owner_pid(row.lease_owner) in by_pid else None

        stalled_batch, owner, attempt = wait_for(a_batch_in_flight, 240, "a batch in flight")
        stalled = by_pid[_owner_pid(owner)]
        os.kill(stalled.pid, signal.SIGSTOP)  # its heartbeat stops with it: the lease runs out

        def rescued():
            with sessions() as session:
                batch = session.get(JobBatch, stalled_batch)
                return batch if batch.status == "succeeded" else None

        batch = wait_for(rescued, 240, "another teacher to take over and commit the stalled batch", interval=0.2)
        assert batch.attempt > attempt and _owner_pid(batch.committed_by) != stalled.pid
        os.kill(stalled.pid, signal.SIGCONT)  # it wakes up holding a result whose lease is gone

        def all_finished():
            with sessions() as session:
                statuses = session.scalars(select(Job.status).where(Job.id.in_(job_ids))).all()
            return statuses if all(status in ("succeeded", "failed", "cancelled") for status in statuses) else None

        assert wait_for(all_finished, 400, "every job to finish", interval=0.5) == ["succeeded"] * JOBS
        wait_for(lambda: "lease lost" in stalled.log() or "lease on" in stalled.log(), 60,
                 "the resumed teacher to notice it lost the lease")
        assert stalled.process.poll() is None  # it carries on with other work

        with sessions() as session:
            twice = session.execute(select(ChainRecord.job_id, ChainRecord.prompt_index, ChainRecord.chain_index)
                                    .group_by(ChainRecord.job_id, ChainRecord.prompt_index, ChainRecord.chain_index)
                                    .having(func.count() > 1)).all()
            chains = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id.in_(job_ids)))
            accepted = session.scalar(select(func.count()).select_from(ChainRecord)
                                      .where(ChainRecord.job_id.in_(job_ids), ChainRecord.accepted))
            pairs = session.scalar(select(func.count()).select_from(Pair).where(Pair.job_id.in_(job_ids)))
            committers = set(session.scalars(select(JobBatch.committed_by).where(JobBatch.job_id.in_(job_ids))))
            failures = session.scalar(select(func.sum(JobBatch.failures)).where(JobBatch.job_id.in_(job_ids)))
            jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
    finally:
        db.dispose()
    assert twice == [] and chains == JOBS * PROMPTS
    assert pairs == accepted == sum(job.accepted for job in jobs)
    assert all(job.done == job.total == PROMPTS for job in jobs) and failures == 0  # a rescue is not a failure
    assert len({_owner_pid(owner) for owner in committers}) >= 2  # the work was shared
    print(f"\nreliability: 3 teachers, {JOBS} jobs x {PROMPTS} prompts, batch {stalled_batch} stalled for > {LEASE_SECONDS} s "
          f"lease and rescued; {chains} chains, {pairs} pairs, 0 duplicates, committers {len(committers)}")
