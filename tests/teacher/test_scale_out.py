"""Two teacher processes on one Postgres share ONE job: each claims batches of it, every prompt is
stored exactly once, progress adds up, and the job succeeds.

Real processes (`dsc teacher serve`, transformers engine, one torch thread each), the real
model, a real Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import func, select

from live_server import wait_ready, stop_process
from shared.db.models import ChainRecord, Job, JobBatch, Pair
from shared.db.session import make_engine, session_factory

CLIENT_KEY, ADMIN_TOKEN = "scale-test-client", "scale-test-admin"
PROMPTS = 8


def _start(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "teacher", "serve", "--port", str(port)],
        env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def test_two_teacher_processes_share_one_job(tmp_path, model_store, postgres_url, waiter, unused_port):
    env = {
        **os.environ,
        "DSC_DATABASE_URL": postgres_url, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
        "DSC_ENGINE": "transformers", "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN,
        "DSC_JOB_BATCH_SIZE": "1", "DSC_JOB_POLL_SECONDS": "0.1", "DSC_TEACHER_THREADS": "1",
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }
    processes: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for i in range(2):
            port, log_path = unused_port(), tmp_path / f"teacher-{i}.log"
            processes.append((_start(port, env, log_path), f"http://127.0.0.1:{port}", log_path))
        for process, url, log_path in processes:
            wait_ready(url, alive=lambda p=process: p.poll() is None, timeout=240, what="teacher",
                       detail=lambda p=log_path: p.read_text()[-3000:], interval=0.2)
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        prompts = [f"Write a harsh review of film number {i}." for i in range(PROMPTS)]
        response = httpx.post(f"{processes[0][1]}/v1/jobs", headers=headers, timeout=30,
                              json={"task": "sentiment", "prompts": prompts, "acceptance": "always", "max_tokens": 4, "seed": 3})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def finished():
            body = httpx.get(f"{processes[1][1]}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
            return body if body["status"] in ("succeeded", "failed", "cancelled") else None

        body = waiter(finished, 300, "the shared job to finish", 0.2)
        pids = {str(process.pid) for process, _, _ in processes}
    finally:
        for process, _, _ in processes:
            stop_process(process)

    assert body["status"] == "succeeded", body
    assert body["progress"]["done"] == body["progress"]["total"] == PROMPTS and body["failures"] == 0
    db = make_engine(postgres_url)
    with session_factory(db)() as session:
        keys = session.execute(select(ChainRecord.prompt_index, ChainRecord.chain_index).where(ChainRecord.job_id == job_id)).all()
        accepted = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id, ChainRecord.accepted))
        pairs = session.scalar(select(func.count()).select_from(Pair).where(Pair.job_id == job_id))
        rows = session.execute(select(JobBatch.start, JobBatch.status, JobBatch.committed_by).where(JobBatch.job_id == job_id)).all()
        job = session.get(Job, job_id)
    db.dispose()
    assert sorted(keys) == [(i, 0) for i in range(PROMPTS)]  # every prompt once, none twice
    assert pairs == accepted == job.accepted == body["progress"]["accepted"]
    assert sorted(start for start, _, _ in rows) == list(range(PROMPTS)) and {status for _, status, _ in rows} == {"succeeded"}
    committers = {owner.split(":")[1] for _, _, owner in rows}  # owner = host:pid:worker:nonce
    assert committers == pids, f"batches committed by {committers}, teacher processes {pids}"
    for _, _, log_path in processes:  # each process says which batches it claimed
        assert f"claimed job {job_id} batch" in log_path.read_text()
