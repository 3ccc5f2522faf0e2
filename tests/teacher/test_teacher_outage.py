"""The teacher's database (a Postgres server of the test's own) goes away and comes back: readiness
turns 503, requests get a 503 in the one error shape with Retry-After (never a 500), a job in flight
waits and then finishes with every prompt stored once, and the outage is logged a few lines, not a
traceback a poll."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import func, select

from own_postgres import available, own_postgres
from shared.db.models import ChainRecord, Job

JOB = {"task": "sentiment", "prompts": [f"Review film number {i}." for i in range(6)], "max_tokens": 4, "seed": 5}


def test_requests_and_jobs_ride_out_a_database_outage(make_teacher, caplog):
    if not available():
        pytest.skip("needs Postgres's initdb and pg_ctl and runuser (Debian's postgresql package)")
    caplog.set_level(logging.WARNING)
    with own_postgres() as server:
        teacher = make_teacher(server.url, jobs={"workers": 1, "batch_size": 2, "lease_seconds": 120})
        with teacher.client() as client:
            job = client.post("/v1/jobs", json=JOB)
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            deadline = time.monotonic() + 240
            while client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] < 2 and time.monotonic() < deadline:
                time.sleep(0.2)

            server.stop()
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"] == "database_unavailable" and ready.headers["Retry-After"]
            for method, path, body in (("POST", "/v1/jobs", JOB), ("GET", f"/v1/jobs/{job_id}", None), ("GET", "/v1/pairs", None)):
                answer = client.request(method, path, json=body)
                assert answer.status_code == 503, (path, answer.status_code, answer.text)
                assert answer.json()["error"]["type"] == "service_unavailable_error" and int(answer.headers["Retry-After"]) > 0
            time.sleep(3)  # the job worker meets the outage too
            server.start()

            finished = teacher.wait_job(job_id, statuses=("succeeded", "failed"), timeout=300)
            assert finished["status"] == "succeeded", finished
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/jobs", json={**JOB, "seed": 6}).status_code == 202
        with teacher.sessions() as session:
            assert session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id)) == len(JOB["prompts"])
            assert session.scalar(select(func.count(func.distinct(ChainRecord.prompt_index))).where(ChainRecord.job_id == job_id)) == 6
            assert session.get(Job, job_id).failures == 0
    worker_lines = [r for r in caplog.records if r.name.startswith("services.teacher") and "database" in r.getMessage()]
    assert worker_lines and len(worker_lines) <= 6 and all(r.exc_info is None for r in worker_lines), [r.getMessage() for r in worker_lines]
