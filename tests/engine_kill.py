"""Test plumbing for killing a running service's vLLM engine core, as the OOM killer or a crash
would: find the `VLLM::EngineCore` process among the service process's descendants (never
anyone else's: another vLLM may run on this machine) and SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # vLLM depends on it: wherever these tests run, it is installed

from live_server import wait_ready


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


def vllm_processes(pid: int) -> list[psutil.Process]:
    """The `VLLM::` processes (engine core, workers) under process `pid`."""
    return [proc for proc in psutil.Process(pid).children(recursive=True) if _title(proc).startswith("VLLM::")]


def kill_engine_core(pid: int) -> psutil.Process:
    """SIGKILL the engine core under process `pid`; returns it (dead)."""
    cores = [proc for proc in vllm_processes(pid) if "EngineCore" in _title(proc)]
    assert len(cores) == 1, f"expected one VLLM::EngineCore under pid {pid}, found {[(p.pid, _title(p)) for p in vllm_processes(pid)]}"
    cores[0].send_signal(signal.SIGKILL)
    cores[0].wait(10)
    return cores[0]


def all_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every one of `processes` has ended; returns those still running after `timeout`."""
    _gone, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def start_service(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m services.cli ARGS` in a session of its own, output into `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "services.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_service_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 300) -> None:
    wait_ready(url, alive=lambda: process.poll() is None, timeout=timeout, what=" ".join(process.args[3:5]),
               detail=lambda: log_path.read_text()[-3000:], interval=0.2)


def stop_service(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL the whole session (the service and whatever it left) if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its own session (start_new_session): only what it started
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(10)


def vllm_env(**overrides: str) -> dict[str, str]:
    """The environment of a service on the vLLM engine, eager (fast start) and small."""
    env = {
        **os.environ,
        "DSC_ENGINE": "vllm", "DSC_VLLM_ENFORCE_EAGER": "true", "DSC_VLLM_GPU_MEMORY_UTILIZATION": "0.15", "DSC_VLLM_KV_CACHE_GIB": "0.5",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("DSC_TEST_TORCH_THREADS", "1"),
    }
    env.update(overrides)
    return env


def since(started: float) -> float:
    return time.monotonic() - started


def kill_core_and_wait_exit(process: subprocess.Popen, log_path: Path, service: str, wait_s: float) -> tuple[int, float, list[psutil.Process]]:
    """SIGKILL the engine core of a running service and wait for the service to exit: (its exit
    status, seconds from the kill to the exit, the engine's processes as they were before)."""
    import pytest

    engine = vllm_processes(process.pid)
    kill_engine_core(process.pid)
    killed_at = time.monotonic()
    try:
        code = process.wait(wait_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {service} still runs {wait_s:.0f} s after its engine died\n{log_path.read_text()[-3000:]}")
    return code, since(killed_at), engine


def check_exit_for_engine_death(service: str, code: int, exited_in: float, left: list, log_text: str, within_s: float) -> None:
    """The service ended as DSC_ON_ENGINE_DEATH=exit promises: status 75, soon, no vLLM process left."""
    from shared.engines.base import ENGINE_DEAD_EXIT_CODE

    print(f"\nthe {service} exited {exited_in:.1f} s after its engine core was killed, status {code}")
    assert code == ENGINE_DEAD_EXIT_CODE, f"exit {code}\n{log_text[-3000:]}"
    assert exited_in < within_s
    assert not left, f"vLLM processes outlived the {service}: {left}"


def wait_engine_dead_readiness(url: str, admin_token: str, timeout: float = 30):
    """/readyz once it turns 503 after an engine death, as the admin sees it (with the error)."""
    import httpx

    from live_server import wait_for

    def not_ready():
        response = httpx.get(f"{url}/readyz", timeout=10, headers={"Authorization": f"Bearer {admin_token}"})
        return response if response.status_code == 503 else None

    return wait_for(not_ready, timeout, "/readyz to turn 503")
