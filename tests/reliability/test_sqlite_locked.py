"""SQLite held locked past its busy timeout (another process in a long write transaction) while a
teacher runs a job: submissions get 503 with Retry-After, reads keep answering, the job worker
waits instead of failing the batch, and once the lock is gone the job finishes with every prompt
stored once. The busy timeout is 1 s here (`?timeout=1` in the URL; 30 s by default)."""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy import func, select

from live_server import wait_for
from shared.db.models import ChainRecord, Job, JobBatch
from shared.db.session import make_engine, session_factory

PROMPTS, HOLD_SECONDS = 8, 6


def test_a_job_and_the_api_ride_out_a_locked_sqlite_database(services, tmp_path):
    path = tmp_path / "dsc.db"
    launcher = services(f"sqlite:///{path}?timeout=1", job_batch_size=2, job_poll_seconds=0.1)
    teacher = launcher.wait_ready(launcher.start("teacher", "serve", name="teacher"))
    job = {"task": "sentiment", "prompts": [f"Review film number {i}." for i in range(PROMPTS)], "max_tokens": 8, "seed": 4}
    with teacher.client() as client:
        created = client.post("/v1/jobs", json=job)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 2, 240, "the first batch")

        holder = sqlite3.connect(str(path), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a long write transaction elsewhere: every writer waits, then gives up
        try:
            submitted = client.post("/v1/jobs", json={**job, "seed": 5})
            listed = client.get("/v1/jobs")
            shown = client.get(f"/v1/jobs/{job_id}")
            time.sleep(HOLD_SECONDS)  # the worker meets the lock too, several times
        finally:
            holder.rollback()
            holder.close()
        finished = wait_for(lambda: (body := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and body,
                            300, "the job to finish", interval=0.3)
        again = client.post("/v1/jobs", json={**job, "seed": 6})

    assert submitted.status_code == 503 and int(submitted.headers["Retry-After"]) > 0, submitted.text
    assert submitted.json()["error"]["type"] == "service_unavailable_error"
    assert listed.status_code == 200 and shown.status_code == 200  # reads do not wait for the writer's lock
    assert finished["status"] == "succeeded", finished
    assert again.status_code == 202
    db = make_engine(f"sqlite:///{path}")
    try:
        with session_factory(db)() as session:
            keys = session.execute(select(ChainRecord.prompt_index).where(ChainRecord.job_id == job_id)).scalars().all()
            failures = session.scalar(select(func.sum(JobBatch.failures)).where(JobBatch.job_id == job_id))
            jobs = session.scalar(select(func.count()).select_from(Job))
    finally:
        db.dispose()
    assert sorted(keys) == list(range(PROMPTS)) and failures == 0  # the lock cost no batch a failure
    assert jobs == 2  # the refused submission left nothing behind
    log = teacher.log()
    assert "database is unavailable" in log and "answers again" in log, log[-3000:]
    print(f"\nSQLite locked {HOLD_SECONDS} s past a 1 s busy timeout: submission 503, reads 200, job {finished['status']} "
          f"with {len(keys)}/{PROMPTS} prompts once, 0 batch failures")
