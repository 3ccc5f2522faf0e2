"""The three services log one way under `dsc up`: JSON lines on stderr (the children's log files),
the request, job or distillation id on the lines written for it, and one access line per request.

Everything is real: `dsc up`'s three processes, the bundled model, SQLite, a small job and a
one-step distillation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from live_server import free_port, wait_for, wait_ready

CLIENT_KEY, ADMIN_TOKEN = "client-key-logs", "admin-token-logs"


def _records(path: Path) -> list[dict]:
    """Every line of a service's log, each of which must be a JSON object."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]}")
    return records


def _access(records: list[dict], request_id: str) -> list[dict]:
    return [record for record in records if record["logger"] == "dsc.access" and record.get("request_id") == request_id]


@pytest.mark.timeout(1200)
def test_every_service_logs_json_lines_with_its_ids(tmp_path, model_store):
    data_dir = tmp_path / "data"
    teacher_port, student_port = free_port(), free_port()
    env = {
        **os.environ, "DSC_DATA_DIR": str(data_dir), "DSC_MODEL_STORE": str(model_store),
        "DSC_DATABASE_URL": f"sqlite:///{tmp_path / 'dsc.db'}", "DSC_ENGINE": "transformers",
        "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN, "DSC_TEACHER_PORT": str(teacher_port),
        "DSC_STUDENT_PORT": str(student_port), "DSC_DISTILL_MIN_PAIRS": "2", "DSC_JOB_POLL_SECONDS": "0.2",
        "DSC_TRAINER_POLL_SECONDS": "0.5", "DSC_TRAINER_THREADS": "1", "OMP_NUM_THREADS": "1",
    }
    env.pop("DSC_LOG_FORMAT", None)
    env.pop("DSC_LOG_LEVEL", None)  # the defaults: JSON, INFO for the services
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    teacher_url, student_url = f"http://127.0.0.1:{teacher_port}", f"http://127.0.0.1:{student_port}"
    try:
        for url in (teacher_url, student_url):
            wait_ready(url, alive=lambda: up.poll() is None, timeout=600, what="dsc up", interval=1)
        client = httpx.Client(base_url=teacher_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)
        task = client.get("/v1/tasks/sentiment", headers={"X-Request-ID": "logs-teacher-task"}).json()
        student = httpx.Client(base_url=student_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=120)
        model = student.get("/v1/models", headers={"X-Request-ID": "logs-student-models"}).json()["data"][0]["id"]
        chat = student.post("/v1/chat/completions", headers={"X-Request-ID": "logs-student-chat"},
                            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert chat.status_code == 200, chat.text

        job = client.post("/v1/jobs", json={"task": "sentiment", "prompts": task["prompts"][:2], "acceptance": "always",
                                            "steps": 1, "max_tokens": 8, "seed": 1}).json()
        done = wait_for(lambda: (view := client.get(f"/v1/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and view,
                        300, "the job to finish", 0.5)
        assert done["status"] == "succeeded", done
        run = client.post("/admin/distillations", json={
            "task": "sentiment", "jobs": [job["id"]], "max_steps": 1, "batch_size": 2, "min_reward": -1.0,
            "eval_prompts": task["eval_prompts"][:1], "eval_samples": 1, "eval_max_tokens": 4, "collapse_check": False,
        }).json()
        assert "id" in run, run
        finished = wait_for(lambda: (view := client.get(f"/admin/distillations/{run['id']}").json())["status"]
                            in ("succeeded", "failed") and view, 600, "the distillation to finish", 1)
        assert finished["status"] == "succeeded", finished
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output

    logs = data_dir / "logs"
    teacher, trainer, student = (_records(logs / f"{name}.log") for name in ("teacher", "trainer", "student"))
    for records in (teacher, trainer, student):
        assert all({"ts", "level", "logger", "message"} <= set(record) for record in records)
        assert not [record for record in records if record["logger"] == "uvicorn.access"]  # uvicorn's own access log is off

    # One access line per request, with the request's id (the client's X-Request-ID).
    (task_line,) = _access(teacher, "logs-teacher-task")
    assert (task_line["method"], task_line["path"], task_line["status"]) == ("GET", "/v1/tasks/sentiment", 200)
    (models_line,) = _access(student, "logs-student-models")
    (chat_line,) = _access(student, "logs-student-chat")
    assert (chat_line["method"], chat_line["path"], chat_line["status"]) == ("POST", "/v1/chat/completions", 200)
    assert any(record["logger"].startswith("uvicorn") for record in teacher + student)  # uvicorn's own lines, as JSON

    # The job's lines in the teacher, the distillation's in the trainer, each with its id.
    job_lines = [record for record in teacher if record.get("job_id") == job["id"]]
    assert any("claimed job" in record["message"] for record in job_lines) and not any("request_id" in r for r in job_lines)
    shutdown = [record for record in teacher if "shutting down" in record["message"]]
    assert shutdown and not [record for record in shutdown if "request_id" in record]  # SIGTERM belongs to no request
    run_lines = [record for record in trainer if record.get("distillation_id") == run["id"]]
    assert any("claimed distillation" in record["message"] for record in run_lines)
    assert any("succeeded" in record["message"] for record in run_lines)
    assert CLIENT_KEY not in (logs / "student.log").read_text() and ADMIN_TOKEN not in (logs / "teacher.log").read_text()
