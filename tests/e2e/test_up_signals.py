"""`dsc up` leaves no process behind, whatever stops it: Ctrl-C followed by SIGTERM while it is
still stopping, or a SIGKILL of the supervisor itself. Real processes on the bundled model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine_kill import all_gone
from live_server import free_port, wait_ready


def _start_up(tmp_path: Path, model_store: Path) -> tuple[subprocess.Popen, int]:
    teacher_port = free_port()
    env = {
        **os.environ, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
        "DSC_DATABASE_URL": f"sqlite:///{tmp_path / 'dsc.db'}", "DSC_ENGINE": "transformers",
        "DSC_TEACHER_PORT": str(teacher_port), "DSC_STUDENT_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
    }
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return up, teacher_port


def _services(up: subprocess.Popen, timeout: float = 120) -> list[psutil.Process]:
    """The three service processes (and anything under them) once all have started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(up.pid).children()
        if len(children) == 3:
            return psutil.Process(up.pid).children(recursive=True)
        assert up.poll() is None, up.stdout.read()
        time.sleep(0.2)
    pytest.fail("dsc up did not start its three services")


def _read_until(up: subprocess.Popen, marker: str) -> str:
    """The supervisor's output up to and including the first line that holds `marker`."""
    lines = []
    while not lines or marker not in lines[-1]:
        line = up.stdout.readline()
        assert line, "dsc up ended before printing " + repr(marker) + "\n" + "".join(lines)
        lines.append(line)
    return "".join(lines)


def _assert_all_gone(processes: list[psutil.Process], timeout: float, what: str) -> None:
    """Every process ended within `timeout`; any left is killed (never outlives the test) and named."""
    left = all_gone(processes, timeout)
    for process in left:
        process.kill()
    assert not left, f"processes outlived {what}: {left}"


@pytest.mark.timeout(600)
def test_ctrl_c_then_sigterm_while_stopping_leaves_no_process(tmp_path, model_store):
    up, teacher_port = _start_up(tmp_path, model_store)
    try:
        processes = _services(up)
        wait_ready(f"http://127.0.0.1:{teacher_port}", alive=lambda: up.poll() is None, timeout=400, what="dsc up", interval=1)
        up.send_signal(signal.SIGINT)
        seen = _read_until(up, "stopping …")  # it is stopping its services now (a fixed sleep could miss that window)
        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=90)
        output = seen + rest
    finally:
        if up.poll() is None:
            up.kill()
    _assert_all_gone(processes, 15, f"dsc up\n{output}")
    assert "killing the services now" in output, output  # the second signal was seen, not the supervisor's death


@pytest.mark.timeout(300)
def test_a_killed_supervisor_takes_its_services_with_it(tmp_path, model_store):
    up, _ = _start_up(tmp_path, model_store)
    try:
        processes = _services(up)
        up.send_signal(signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal can stop the children
        up.wait(10)
    finally:
        if up.poll() is None:
            up.kill()
    _assert_all_gone(processes, 60, "the killed dsc up")
