"""A dead engine is noticed: the `VLLM::EngineCore` process of a running `dsc teacher serve` is
SIGKILLed (as the OOM killer would) while a job batch and a synchronous call run on it.

- exit mode (the default): the synchronous call is answered 503 with the reason, the job is handed
  back to the queue with no failure counted and nothing half-written, and the process exits by
  itself with status 75 (ENGINE_DEAD_EXIT_CODE) in bounded time, leaving no vLLM process behind;
- restart mode: /readyz turns 503 with the reason, workers stop claiming (a job submitted
  meanwhile stays queued), a new engine comes up in the same process, /readyz is 200 again and
  both jobs finish with no failure counted.

Before: /readyz stayed 200 and the worker failed every queued job, three batches each.
Real processes, the real model on vLLM, SQLite."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from engine_kill import (all_gone, check_exit_for_engine_death, kill_core_and_wait_exit, kill_engine_core, start_service,
                         stop_service, vllm_env, vllm_processes, wait_engine_dead_readiness, wait_service_ready)
from live_server import wait_for
from shared.db.models import ChainRecord, Job, JobBatch
from shared.db.session import make_engine, session_factory

pytestmark = pytest.mark.vllm

CLIENT_KEY, ADMIN_TOKEN = "death-test-client", "death-test-admin"
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
EXIT_WITHIN_S = 60
KILLED = "EngineCore was killed by signal 9 (SIGKILL)"  # how the reason names a SIGKILLed core


@pytest.fixture(autouse=True)
def needs_vllm():
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")


def _teacher(tmp_path: Path, model_store: Path, port: int, mode: str, **overrides: str):
    database_url = f"sqlite:///{tmp_path / 'teacher.db'}"
    env = vllm_env(**{
        "DSC_DATABASE_URL": database_url, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
        "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN, "DSC_ON_ENGINE_DEATH": mode,
        "DSC_JOB_BATCH_SIZE": "8", "DSC_JOB_POLL_SECONDS": "0.2", "DSC_JOB_LEASE_SECONDS": "60", **overrides,
    })
    log_path = tmp_path / "teacher.log"
    process = start_service(["teacher", "serve", "--port", str(port)], env, log_path)
    return process, log_path, database_url


def _submit(url: str, prompts: int, max_tokens: int, tag: str) -> str:
    body = {"task": "sentiment", "acceptance": "always", "steps": 1, "temperature": 0.7, "max_tokens": max_tokens, "seed": 3,
            "prompts": [f"Write a harsh review of {tag} number {i}." for i in range(prompts)]}
    response = httpx.post(f"{url}/v1/jobs", headers=HEADERS, json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers=HEADERS, timeout=30).json()


def test_killed_engine_core_hands_the_job_back_and_the_teacher_exits(tmp_path: Path, model_store: Path, unused_port):
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    process, log_path, database_url = _teacher(tmp_path, model_store, port, "exit")
    try:
        wait_service_ready(process, url, log_path)
        job_id = _submit(url, prompts=16, max_tokens=256, tag="film")
        wait_for(lambda: _job(url, job_id)["status"] == "running", 120, "the job to be claimed", 0.1)

        call: dict = {}

        def synchronous_call() -> None:
            try:
                response = httpx.post(f"{url}/v1/critique-revise", headers=HEADERS, timeout=120, json={
                    "task": "sentiment", "acceptance": "always", "steps": 1, "max_tokens": 256, "seed": 4,
                    "prompts": [f"Write a cruel review of play number {i}." for i in range(4)]})
                call.update(status=response.status_code, body=response.json(), retry_after=response.headers.get("retry-after"))
            except Exception as exc:
                call.update(error=exc)

        caller = threading.Thread(target=synchronous_call, daemon=True)
        caller.start()
        time.sleep(2.0)  # the call is waiting on the engine now
        assert not call, f"the synchronous call ended before the kill; make it longer: {call}"

        code, exited_in, engine_processes = kill_core_and_wait_exit(process, log_path, "teacher", EXIT_WITHIN_S + 30)
        caller.join(30)
        left = all_gone(engine_processes, timeout=15)
    finally:
        stop_service(process)
    log_text = log_path.read_text()
    check_exit_for_engine_death("teacher", code, exited_in, left, log_text, EXIT_WITHIN_S)
    assert KILLED in log_text, log_text[-3000:]

    # The synchronous call: 503 (retry later), saying the engine died and why.
    assert call.get("status") == 503, f"{call}\n{log_text[-3000:]}"
    error = call["body"]["error"]
    assert error["type"] == "service_unavailable_error" and call["retry_after"]
    assert "engine is dead" in error["message"] and KILLED in error["message"], error

    # The job: handed back whole (claimable at once), no failure counted, nothing half-written.
    db = make_engine(database_url)
    with session_factory(db)() as session:
        job = session.get(Job, job_id)
        stored = session.query(ChainRecord).filter(ChainRecord.job_id == job_id).count()
        held = session.query(JobBatch).filter(JobBatch.job_id == job_id, JobBatch.lease_owner.is_not(None)).count()
    db.dispose()
    assert (job.status, held, job.failures, job.error) == ("queued", 0, 0, None), (job.status, held, job.failures, job.error)
    assert job.done < job.total and stored == job.done


def test_restart_mode_rebuilds_the_engine_and_the_jobs_finish(tmp_path: Path, model_store: Path, unused_port):
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    process, log_path, _database_url = _teacher(tmp_path, model_store, port, "restart", DSC_JOB_BATCH_SIZE="4")
    try:
        wait_service_ready(process, url, log_path)
        first = _submit(url, prompts=8, max_tokens=48, tag="film")
        wait_for(lambda: _job(url, first)["status"] == "running", 120, "the job to be claimed", 0.1)
        old = vllm_processes(process.pid)
        killed = kill_engine_core(process.pid)
        readyz = wait_engine_dead_readiness(url, ADMIN_TOKEN)
        body = readyz.json()
        assert readyz.headers.get("retry-after") and body["checks"]["engine"] is False and body["reason"] == "engine_dead", body
        assert KILLED in body["engine_error"] and "restarting the engine" in body["engine_error"], body  # the admin sees why
        anonymous = httpx.get(f"{url}/readyz", timeout=10).json()
        assert anonymous.get("reason") in ("engine_dead", None) and "engine_error" not in anonymous, anonymous  # None: rebuilt already
        refused = httpx.post(f"{url}/v1/critique-revise", headers=HEADERS, timeout=30,
                             json={"task": "sentiment", "prompts": ["Review a film."], "max_tokens": 4})
        assert refused.status_code == 503 and KILLED in refused.json()["error"]["message"], refused.text
        second = _submit(url, prompts=4, max_tokens=16, tag="play")
        # While the engine is down the first job is back in the queue, and nothing claims the second.
        handed_back = wait_for(lambda: (job := _job(url, first))["status"] == "queued" and job, 30, "the first job to be handed back")
        assert handed_back["failures"] == 0 and handed_back["error"] is None, handed_back
        assert _job(url, second)["status"] == "queued"

        wait_service_ready(process, url, log_path)  # the new engine is in
        done = [wait_for(lambda job_id=job_id: (job := _job(url, job_id))["status"] in ("succeeded", "failed") and job, 400,
                         f"job {job_id} to finish", 0.5) for job_id in (first, second)]
        assert process.poll() is None, "the teacher exited instead of restarting its engine"
        new = {proc.pid: " ".join(proc.cmdline()) for proc in vllm_processes(process.pid)}
        leftovers = all_gone(old, timeout=15)
    finally:
        stop_service(process)
    log_text = log_path.read_text()
    for job in done:
        assert (job["status"], job["failures"]) == ("succeeded", 0), job
        assert job["progress"]["done"] == job["progress"]["total"]
    assert killed.pid not in new and any("EngineCore" in title for title in new.values()), new
    assert not leftovers, f"processes of the dead engine still run: {leftovers}"
    assert "teacher engine rebuilt" in log_text and signal.SIGKILL.name in log_text
