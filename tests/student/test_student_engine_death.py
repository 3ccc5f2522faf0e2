"""A dead engine is noticed by the student too: the `VLLM::EngineCore` process of a running
`dsc student serve` is SIGKILLed (as the OOM killer would) while completions run on it.

- exit mode (the default): the completion in flight is answered 503 with the reason (a streamed
  one ends with an error event saying so), and the process exits by itself with status 75
  (ENGINE_DEAD_EXIT_CODE) in bounded time, leaving no vLLM process behind;
- restart mode: /readyz turns 503 with the reason, requests are answered 503, the model is loaded
  afresh in the same process and /readyz is 200 again; completions work.

Real processes, the real model on vLLM (standalone: `--model`, no registry)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from engine_kill import (all_gone, check_exit_for_engine_death, kill_core_and_wait_exit, kill_engine_core, start_service,
                         stop_service, vllm_env, vllm_processes, wait_engine_dead_readiness, wait_service_ready)
from live_server import free_port, wait_for
from shared.settings import BUNDLED_MODEL

pytestmark = pytest.mark.vllm

CLIENT_KEY, ADMIN_TOKEN = "student-death-client", "student-death-admin"
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
EXIT_WITHIN_S = 60
KILLED = "EngineCore was killed by signal 9 (SIGKILL)"
LONG = {"model": "base", "max_tokens": 400, "temperature": 0.8, "seed": 1,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]}


@pytest.fixture(autouse=True)
def needs_vllm():
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")


def _student(tmp_path: Path, model_store: Path, port: int, mode: str):
    env = vllm_env(DSC_DATA_DIR=str(tmp_path / "data"), DSC_MODEL_STORE=str(model_store), DSC_API_KEYS=CLIENT_KEY,
                   DSC_ADMIN_TOKEN=ADMIN_TOKEN, DSC_ON_ENGINE_DEATH=mode)
    log_path = tmp_path / "student.log"
    return start_service(["student", "serve", "--model", BUNDLED_MODEL, "--port", str(port)], env, log_path), log_path


def test_killed_engine_core_answers_503_and_the_student_exits(tmp_path: Path, model_store: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, log_path = _student(tmp_path, model_store, port, "exit")
    plain: dict = {}
    streamed: dict = {"events": []}

    def complete() -> None:
        try:
            response = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, json=LONG, timeout=120)
            plain.update(status=response.status_code, body=response.json(), retry_after=response.headers.get("retry-after"))
        except Exception as exc:
            plain.update(error=exc)

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", headers=HEADERS, json={**LONG, "stream": True}, timeout=120) as response:
                streamed["status"] = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        streamed["events"].append(json.loads(line[len("data: "):]))
        except Exception as exc:
            streamed.update(error=exc)

    try:
        wait_service_ready(process, url, log_path)
        callers = [threading.Thread(target=target, daemon=True) for target in (complete, stream)]
        for caller in callers:
            caller.start()
        wait_for(lambda: len(streamed["events"]) > 3, 60, "the streamed completion to be under way", 0.05)
        assert not plain, f"the completion ended before the kill; make it longer: {plain}"

        code, exited_in, engine_processes = kill_core_and_wait_exit(process, log_path, "student", EXIT_WITHIN_S + 30)
        for caller in callers:
            caller.join(30)
        left = all_gone(engine_processes, timeout=15)
    finally:
        stop_service(process)
    log_text = log_path.read_text()
    check_exit_for_engine_death("student", code, exited_in, left, log_text, EXIT_WITHIN_S)

    assert plain.get("status") == 503, f"{plain}\n{log_text[-3000:]}"
    error = plain["body"]["error"]
    assert error["type"] == "service_unavailable_error" and plain["retry_after"], plain
    assert "engine is dead" in error["message"] and KILLED in error["message"], error

    # The stream had begun (200 went out): it ends with an error event naming the death.
    assert streamed.get("status") == 200 and "error" not in streamed, streamed
    last = streamed["events"][-1]
    assert "error" in last and last["error"]["type"] == "service_unavailable_error" and KILLED in last["error"]["message"], last


def test_restart_mode_loads_the_model_afresh(tmp_path: Path, model_store: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, log_path = _student(tmp_path, model_store, port, "restart")
    short = {**LONG, "max_tokens": 8}
    try:
        wait_service_ready(process, url, log_path)
        old = vllm_processes(process.pid)
        killed = kill_engine_core(process.pid)
        readyz = wait_engine_dead_readiness(url, ADMIN_TOKEN)
        assert readyz.headers.get("retry-after") and KILLED in readyz.json()["error"], readyz.json()  # the admin sees why
        assert "loading the models afresh" in readyz.json()["error"] and readyz.json()["reason"] == "engine_dead", readyz.json()
        anonymous = httpx.get(f"{url}/readyz", timeout=10).json()
        assert "error" not in anonymous, anonymous  # an open caller gets the reason code only
        refused = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, json=short, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable_error", refused.text

        wait_service_ready(process, url, log_path)  # the model is in again
        answer = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, json=short, timeout=120)
        assert process.poll() is None, "the student exited instead of loading its model afresh"
        new = {proc.pid: " ".join(proc.cmdline()) for proc in vllm_processes(process.pid)}
        leftovers = all_gone(old, timeout=15)
    finally:
        stop_service(process)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"], answer.text
    assert killed.pid not in new and any("EngineCore" in title for title in new.values()), new
    assert not leftovers, f"processes of the dead engine still run: {leftovers}"
    assert "student models loaded afresh" in log_path.read_text()
