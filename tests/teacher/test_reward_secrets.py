"""An http reward's secrets and reach, over real HTTP against a real teacher (the bundled model)
and a real scoring service on loopback:

- its headers are write-only: no answer (task list, task, task creation, errors) shows them;
- errors that reach a client carry no part of the scorer's reply, synchronously or in a job;
- it cannot reach a private address: task creation is refused (400), and a public name that
  resolves to a private address by the time of the request is refused then. That last test runs a
  teacher process in a mount namespace of its own with its own /etc/hosts, so that the system
  resolver really answers differently later (no resolver is stubbed); it needs `unshare` and
  root, and is skipped where they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from live_server import free_port, wait_ready, stop_process
from scorer import REPLY_TOKEN, running_scorer
from shared.db.models import Task

SECRET = "Bearer scorer-secret-51ab"
QUERY_SECRET = "q-secret-77"
LOOPBACK = {"reward_http": {"allow": ["127.0.0.1/32"]}}  # the operator lets rewards reach the test scorer
ONE_PROMPT = {"prompts": ["Write a harsh review of a film about trains."], "max_tokens": 8, "seed": 3}


def _task(name: str, url: str, **reward) -> dict:
    return {"name": name, "critique_request": "Point out anything negative.", "revision_request": "Rewrite it kindly.",
            "reward": {"type": "http", "url": url, **reward}}


def _no_secret(text: str) -> None:
    assert "scorer-secret" not in text and QUERY_SECRET not in text and REPLY_TOKEN not in text, text


def test_headers_are_write_only(make_teacher):
    with running_scorer() as scorer:
        teacher = make_teacher(jobs={"workers": 0}, **LOOPBACK)
        with teacher.client(teacher.admin_token) as admin, teacher.client() as client:
            created = admin.post("/v1/tasks", json=_task("scored", f"{scorer.url}/score?key={QUERY_SECRET}", headers={"Authorization": SECRET}))
            assert created.status_code == 201, created.text
            _no_secret(created.text)
            assert created.json()["reward"]["headers"] == {"Authorization": "<redacted>"}
            for response in (client.get("/v1/tasks"), client.get("/v1/tasks/scored"), admin.get("/v1/tasks"), admin.get("/v1/tasks/scored")):
                assert response.status_code == 200
                _no_secret(response.text)
            sampled = client.post("/v1/critique-revise", json={"task": "scored", **ONE_PROMPT})
            assert sampled.status_code == 200, sampled.text
        assert scorer.requests and all(r["headers"]["Authorization"] == SECRET for r in scorer.requests)  # the scorer does get them


def test_scorer_failures_reach_clients_without_its_reply(make_teacher, caplog):
    with running_scorer() as scorer:
        teacher = make_teacher(jobs={"max_failures": 1}, **LOOPBACK)
        with teacher.client(teacher.admin_token) as admin, teacher.client() as client:
            assert admin.post("/v1/tasks", json=_task("leaky", f"{scorer.url}/leak", headers={"Authorization": SECRET})).status_code == 201
            failed = client.post("/v1/critique-revise", json={"task": "leaky", **ONE_PROMPT})
            assert failed.status_code == 502 and failed.json()["error"]["type"] == "reward_error", failed.text
            assert "HTTP 500" in failed.json()["error"]["message"]
            _no_secret(failed.text)

            job = client.post("/v1/jobs", json={"task": "leaky", **ONE_PROMPT})
            assert job.status_code == 202
            body = teacher.wait_job(job.json()["id"], ("failed",))
            assert "HTTP 500" in body["error"]
            _no_secret(str(body))
            _no_secret(client.get("/v1/jobs").text)
    assert REPLY_TOKEN in caplog.text and "scorer-secret" not in caplog.text  # the reply went to the log, the token did not


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/score", "http://localhost:{port}/score", "http://[::ffff:127.0.0.1]:{port}/score",
                                 "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/score"])
def test_private_targets_are_refused_at_creation(make_teacher, url):
    with running_scorer() as scorer:
        teacher = make_teacher(jobs={"workers": 0})  # no operator allowance
        with teacher.client(teacher.admin_token) as admin:
            response = admin.post("/v1/tasks", json=_task("inside", url.format(port=scorer.port)))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "reward.url" and "not a public address" in error["message"] and "DSC_REWARD_HTTP_ALLOW" in error["message"]
        with teacher.sessions() as session:
            assert session.scalars(select(Task)).all() == []
        assert scorer.requests == []


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


HOST = "scores.dsc-test.example.com"
PUBLIC_ADDRESS = "93.184.215.14"  # a public address; the creation check only resolves it, nothing connects to it


@pytest.mark.skipif(not _namespaces_work(), reason="needs root and `unshare -m` to give the teacher its own /etc/hosts")
def test_a_name_that_resolves_to_a_private_address_later_is_refused_at_request_time(tmp_path, model_store):
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{PUBLIC_ADDRESS} {HOST}\n")
    port, log_path = free_port(), tmp_path / "teacher.log"
    admin_token, client_key = "rebind-admin", "rebind-client"
    env = {**os.environ, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store), "DSC_ENGINE": "transformers",
           "DSC_API_KEYS": client_key, "DSC_ADMIN_TOKEN": admin_token, "DSC_JOB_WORKERS": "0", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("DSC_TEST_TORCH_THREADS", "1")}
    serve = f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -m services.cli teacher serve --port {port}"
    with running_scorer() as scorer, open(log_path, "ab") as log:
        process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", serve], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, alive=lambda: process.poll() is None, timeout=300, what="teacher",
                       detail=lambda: log_path.read_text()[-3000:], interval=0.2)
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=120)
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {client_key}"}, timeout=300)
            created = admin.post("/v1/tasks", json=_task("rebound", f"http://{HOST}:{scorer.port}/score"))
            assert created.status_code == 201, created.text  # at creation the name is public

            hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {HOST}\n")  # in place: the bind mount keeps the inode
            response = client.post("/v1/critique-revise", json={"task": "rebound", **ONE_PROMPT})
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert error["type"] == "reward_error" and "refused to connect" in error["message"], error
            assert scorer.requests == []  # the scorer on loopback was never reached
            assert f"resolves to 127.0.0.1" in log_path.read_text()  # the detail is in the teacher's log
        finally:
            stop_process(process)
    assert f"{HOST}" not in Path("/etc/hosts").read_text()  # the namespace's hosts file never leaked out
