"""A teacher process SIGKILLed mid-job and started again: the batch it held is rescued once its
lease runs out, the job completes, with every prompt stored once and pairs = accepted chains.

Real processes (`dsc teacher serve`), the real model, a real Postgres, a short lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import func, select

from live_server import wait_ready, stop_process
from shared.db.models import ChainRecord, Job, JobBatch, Pair
from shared.db.session import make_engine, session_factory

CLIENT_KEY, ADMIN_TOKEN = "kill-test-client", "kill-test-admin"
LEASE_SECONDS = 3


def _start(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "teacher", "serve", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 240) -> None:
    wait_ready(url, alive=lambda: process.poll() is None, timeout=timeout, what="teacher",
               detail=lambda: log_path.read_text()[-3000:], interval=0.2)


def test_sigkilled_teacher_resumes_the_job_after_restart(tmp_path, model_store, postgres_url, waiter, unused_port):
    env = {
        **os.environ,
        "DSC_DATABASE_URL": postgres_url, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
        "DSC_ENGINE": "transformers", "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN,
        "DSC_JOB_LEASE_SECONDS": str(LEASE_SECONDS), "DSC_JOB_BATCH_SIZE": "1", "DSC_JOB_POLL_SECONDS": "0.2",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("DSC_TEST_TORCH_THREADS", "1"),
    }
    db = make_engine(postgres_url)
    sessions = session_factory(db)

    def job_row(job_id: str) -> Job:
        with sessions() as session:
            return session.get(Job, job_id)

    def held_batches(job_id: str) -> list[JobBatch]:
        with sessions() as session:
            return list(session.scalars(select(JobBatch).where(JobBatch.job_id == job_id, JobBatch.status == "running")))

    log_path = tmp_path / "teacher-1.log"
    port = unused_port()
    first = _start(port, env, log_path)
    try:
        _wait_ready(first, f"http://127.0.0.1:{port}", log_path)
        prompts = [f"Write a harsh review of film number {i}." for i in range(3)]
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", headers=headers, timeout=30,
                              json={"task": "sentiment", "prompts": prompts, "acceptance": "always", "max_tokens": 4, "seed": 11})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # Kill as soon as the first batch is committed and the worker is inside the second.
        waiter(lambda: job_row(job_id).done >= 1 and held_batches(job_id), 240, "the first batch to commit", 0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    killed, held = job_row(job_id), held_batches(job_id)
    assert killed.status == "running" and len(held) == 1 and held[0].lease_owner is not None  # left behind, lease still held
    assert 1 <= killed.done < 3, "the job finished before the kill; make its batches slower"

    log_path = tmp_path / "teacher-2.log"
    port = unused_port()
    second = _start(port, env, log_path)
    try:
        _wait_ready(second, f"http://127.0.0.1:{port}", log_path)
        waiter(lambda: job_row(job_id).status in ("succeeded", "failed"), 300, "the rescued job to finish", 0.2)
        body = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30).json()
    finally:
        stop_process(second)

    assert body["status"] == "succeeded", body
    assert body["attempt"] == 2 and body["progress"]["done"] == body["progress"]["total"] == 3
    with sessions() as session:
        indexes = sorted(session.scalars(select(ChainRecord.prompt_index).where(ChainRecord.job_id == job_id)))
        accepted_chains = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id, ChainRecord.accepted))
        pairs = session.scalar(select(func.count()).select_from(Pair).where(Pair.job_id == job_id))
        distinct_pairs = session.scalar(select(func.count(func.distinct(Pair.prompt_index))).where(Pair.job_id == job_id))
    db.dispose()
    assert indexes == [0, 1, 2]  # no prompt lost, none stored twice
    assert pairs == accepted_chains == body["progress"]["accepted"] == distinct_pairs

    # Structured logs: one JSON object per line, access lines carrying the request id.
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("path") == f"/v1/jobs/{job_id}"]
    assert access and access[0]["request_id"] and access[0]["status"] == 200
    assert any(r.get("job_id") == job_id and "claimed job" in r.get("message", "") for r in records)
    assert CLIENT_KEY not in log_path.read_text()
