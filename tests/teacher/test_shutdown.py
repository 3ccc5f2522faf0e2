"""SIGTERM with work in flight: a `dsc teacher serve` process with a long job batch running and a
synchronous call waiting on the engine stops in bounded time; the call is answered 503 with
Retry-After and the job is handed back to the queue (claimable at once, nothing half-written).

Before: uvicorn waited for the call in flight before it ran the app's shutdown, so a long (or,
on the shared offline vLLM `LLM`, hung) call held the process for 30 s and more.
Real processes, the real model, SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from live_server import wait_for, wait_ready
from shared.db.models import ChainRecord, Job, JobBatch
from shared.db.session import make_engine, session_factory

CLIENT_KEY, ADMIN_TOKEN = "shutdown-test-client", "shutdown-test-admin"
STOP_WITHIN_S = 15  # the bound
LONG = {"task": "sentiment", "acceptance": "always", "steps": 1, "temperature": 0.7, "max_tokens": 256, "seed": 3}


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_sigterm_stops_the_teacher_in_bounded_time_with_work_in_flight(engine, tmp_path: Path, model_store: Path, unused_port):
    if engine == "vllm":
        from shared.engines.vllm_options import vllm_available

        if not vllm_available():
            pytest.skip("vLLM does not import on this machine")
    database_url = f"sqlite:///{tmp_path / 'teacher.db'}"
    env = {
        **os.environ,
        "DSC_DATABASE_URL": database_url, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
        "DSC_ENGINE": engine, "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN,
        "DSC_JOB_BATCH_SIZE": "8", "DSC_JOB_POLL_SECONDS": "0.2", "DSC_JOB_LEASE_SECONDS": "60",
        "DSC_VLLM_ENFORCE_EAGER": "true", "DSC_VLLM_GPU_MEMORY_UTILIZATION": "0.15", "DSC_VLLM_KV_CACHE_GIB": "0.5",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("DSC_TEST_TORCH_THREADS", "1"),
    }
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "teacher.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "teacher", "serve", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    db = make_engine(database_url)
    sessions = session_factory(db)
    try:
        wait_ready(url, alive=lambda: process.poll() is None, timeout=300, what="teacher",
                   detail=lambda: log_path.read_text()[-3000:], interval=0.2)
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        submitted = httpx.post(f"{url}/v1/jobs", headers=headers, timeout=30,
                               json={**LONG, "prompts": [f"Write a harsh review of film number {i}." for i in range(16)]})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()["status"] == "running",
                 120, "the job to be claimed", 0.1)

        call: dict = {}

        def synchronous_call() -> None:
            started = time.monotonic()
            try:
                response = httpx.post(f"{url}/v1/critique-revise", headers=headers, timeout=120,
                                      json={**LONG, "prompts": [f"Write a cruel review of play number {i}." for i in range(4)]})
                call.update(status=response.status_code, body=response.json(), retry_after=response.headers.get("retry-after"))
            except Exception as exc:
                call.update(error=exc)
            call["seconds"] = time.monotonic() - started

        caller = threading.Thread(target=synchronous_call, daemon=True)
        caller.start()
        # SIGTERM only once the call holds an engine slot: sent earlier, it would meet a closed socket
        wait_for(lambda: _sync_in_flight(url) >= 1, 60, "the synchronous call to reach the engine", 0.1)
        time.sleep(1.0)  # and is waiting on the engine's generation
        assert not call, f"the synchronous call ended before SIGTERM; make it longer: {call}"

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the teacher still runs 60 s after SIGTERM\n{log_path.read_text()[-3000:]}")
        stopped_in = time.monotonic() - signalled
        caller.join(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"\n{engine}: stopped {stopped_in:.1f} s after SIGTERM; the synchronous call was answered after {call.get('seconds', -1):.1f} s")
    log_text = log_path.read_text()
    assert stopped_in < STOP_WITHIN_S, f"stopping took {stopped_in:.1f} s\n{log_text[-3000:]}"
    assert process.returncode in (0, -signal.SIGTERM), f"exit {process.returncode}\n{log_text[-3000:]}"

    assert call.get("status") == 503, f"{call}\n{log_text[-3000:]}"
    assert call["body"]["error"]["type"] == "service_unavailable_error" and call["retry_after"]

    with sessions() as session:
        job = session.get(Job, job_id)
        stored = session.query(ChainRecord).filter(ChainRecord.job_id == job_id).count()
        held = session.query(JobBatch).filter(JobBatch.job_id == job_id, JobBatch.lease_owner.is_not(None)).count()
    db.dispose()
    assert (job.status, held, job.failures) == ("queued", 0, 0), (job.status, held, job.failures, job.error)
    assert job.done < job.total and stored == job.done  # the batch in flight was dropped whole, nothing half-written
    assert "unhandled error" not in log_text and "Traceback" not in log_text.split("teacher shutting down")[-1]


def _sync_in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("dsc_teacher_sync_in_flight "):
            return float(line.split()[1])
    return 0.0
