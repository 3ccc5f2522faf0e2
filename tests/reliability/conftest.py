"""Fixtures of the reliability suite: real service processes (`dsc ... serve`, `dsc trainer work`)
started from the test, faults injected from outside (signals, a full volume, floods), and the
database read afterwards to check that nothing was lost or written twice.

Each process gets one torch thread: the machines have two cores and the suite runs several
processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from live_server import free_port, stop_process, wait_ready
from shared.db.models import Student
from shared.db.session import transaction
from shared.distillation.registry import promote

CLIENT_KEY, ADMIN_TOKEN = "reliability-client", "reliability-admin"


@dataclass
class Service:
    """One service process: its URL (servers), its log, and signals to send it."""

    process: subprocess.Popen
    log_path: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        """Resident memory of the process now (from /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def client(self, token: str | None = CLIENT_KEY, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@dataclass
class Services:
    """Starts `dsc` processes with one environment; stops every one of them at the end."""

    tmp_path: Path
    env: dict[str, str]
    started: list[Service] = field(default_factory=list)

    def start(self, *args: str, name: str, serve: bool = True, **env: str) -> Service:
        port = free_port() if serve else None
        command = [sys.executable, "-m", "services.cli", *args, *(["--port", str(port)] if serve else [])]
        log_path = self.tmp_path / f"{name}.log"
        process = subprocess.Popen(command, env={**self.env, **env}, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        service = Service(process, log_path, f"http://127.0.0.1:{port}" if serve else None)
        self.started.append(service)
        return service

    def wait_ready(self, service: Service, timeout: float = 300) -> Service:
        wait_ready(service.url, alive=lambda: service.process.poll() is None, timeout=timeout, what=service.log_path.stem,
                   detail=lambda: service.log()[-3000:], interval=0.2)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            try:
                os.kill(service.pid, 18)  # SIGCONT: a process a test left stopped must be able to take SIGTERM
            except ProcessLookupError:
                pass
            stop_process(service.process, grace=30)


@pytest.fixture()
def services(tmp_path: Path, model_store: Path) -> Iterator[Callable[..., Services]]:
    """`services(database_url, **DSC_settings)`: a launcher of real service processes on that database."""
    made: list[Services] = []

    def build(database_url: str, **settings: str) -> Services:
        env = {
            **os.environ,
            "DSC_DATABASE_URL": database_url, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
            "DSC_ENGINE": "transformers", "DSC_API_KEYS": CLIENT_KEY, "DSC_ADMIN_TOKEN": ADMIN_TOKEN,
            "DSC_TEACHER_THREADS": "1", "DSC_TRAINER_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "DSC_LOG_FORMAT": "text", **{f"DSC_{key.upper()}": str(value) for key, value in settings.items()},
        }
        launcher = Services(tmp_path, env)
        made.append(launcher)
        return launcher

    yield build
    for launcher in made:
        launcher.stop_all()


@pytest.fixture()
def add_student() -> Callable[..., str]:
    """`add_student(sessions, version, base_model=..., adapter_path=... or merged_path=..., promoted=False)`:
    a registry row of the sentiment task, promoted through the registry's own promote when asked; its id."""
    def add(sessions, version: int, *, base_model: Path | str, promoted: bool = False, **paths: Path | str) -> str:
        with transaction(sessions) as session:
            student = Student(name="sentiment-student", version=version, task_name="sentiment", base_model=str(base_model),
                              metrics={}, **{key: str(value) for key, value in paths.items()})
            session.add(student)
            session.flush()
            student_id = student.id
        if promoted:
            promote(sessions, student_id, force=True)
        return student_id

    return add
