"""`dsc up`: teacher, trainer worker and student as local processes, until Ctrl-C."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from shared.db.session import redacted_url
from shared.keys import hash_key
from shared.settings import Settings

console = Console(stderr=True)


@dataclass
class Child:
    name: str
    args: list[str]
    ready_url: str | None
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # Own process group: Ctrl-C in the terminal reaches us, and we stop the children in order.
        self.process = subprocess.Popen([sys.executable, "-m", "services.cli", *self.args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self, client: httpx.Client) -> bool:
        if self.ready_url is None:
            return self.alive()
        try:
            return client.get(self.ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace: float = 20.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class StackTokens:
    """The children's tokens as digests (what they are told), and the plain tokens this process
    generated for the session (None where the operator configured them: only digests are known)."""

    key_digests: list[str]
    admin_digest: str
    client_key: str | None
    admin_token: str | None


def local_tokens(settings: Settings) -> StackTokens:
    """The configured tokens, or fresh ones for this session: local mode is never open by accident."""
    client = None if settings.api_keys else f"dsc-client-{secrets.token_urlsafe(12)}"
    admin = None if settings.admin_token else f"dsc-admin-{secrets.token_urlsafe(12)}"
    return StackTokens(
        key_digests=settings.api_keys or [hash_key(client)], admin_digest=settings.admin_token or hash_key(admin),
        client_key=client, admin_token=admin,
    )


def build_children(settings: Settings, host: str) -> list[Child]:
    logs = settings.data_dir / "logs"
    base = f"http://{host}"
    return [
        Child("teacher", ["teacher", "serve", "--host", host, "--port", str(settings.teacher_port)], f"{base}:{settings.teacher_port}/readyz", logs / "teacher.log"),
        Child("trainer", ["trainer", "work"], None, logs / "trainer.log"),
        Child("student", ["student", "serve", "--host", host, "--port", str(settings.student_port)], f"{base}:{settings.student_port}/readyz", logs / "student.log"),
    ]


def child_env(settings: Settings, tokens: StackTokens) -> dict[str, str]:
    # Digests only: the children's environment never holds a plain token.
    env = dict(os.environ)
    env.update(
        DSC_DATA_DIR=str(settings.data_dir),
        DSC_DATABASE_URL=settings.resolved_database_url,
        DSC_MODEL_STORE=str(settings.resolved_model_store),
        DSC_ENGINE=settings.engine,
        DSC_API_KEYS=",".join(tokens.key_digests),
        DSC_ADMIN_TOKEN=tokens.admin_digest,
        DSC_TEACHER_PORT=str(settings.teacher_port),
        DSC_STUDENT_PORT=str(settings.student_port),
        HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
    )
    return env


def wait_ready(children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    with httpx.Client() as client, console.status("starting teacher, trainer and student …") as status:
        while pending:
            for child in list(pending):
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited during start-up; last lines of {child.log_path}:\n{child.log_tail()}")
                if child.ready(client):
                    pending.remove(child)
                    console.print(f"[green]✓[/green] {child.name} ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(c.name for c in pending)} (logs in {pending[0].log_path.parent})")
            status.update(f"waiting for {', '.join(c.name for c in pending)} …")
            time.sleep(1)


class LocalStack:
    """The three services as child processes; a context manager that always stops them."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1") -> None:
        from shared.db.session import upgrade
        from shared.model_store import resolve_model

        upgrade(settings.resolved_database_url)
        with console.status("preparing models …"):  # once here, not three times in the children
            for model in {settings.teacher_model, settings.student_base_model}:
                resolve_model(model, settings.resolved_model_store)
        self.settings = settings
        self.host = host
        self.tokens = local_tokens(settings)
        self.children = build_children(settings, host)
        self.teacher_url = f"http://{host}:{settings.teacher_port}"
        self.student_url = f"http://{host}:{settings.student_port}"

    def __enter__(self) -> "LocalStack":
        env = child_env(self.settings, self.tokens)
        for child in self.children:
            child.start(env)
        return self

    def __exit__(self, *_exc) -> None:
        console.print("stopping …")
        for child in reversed(self.children):
            child.stop()

    def wait_ready(self, timeout: float) -> None:
        wait_ready(self.children, timeout)

    def exited(self) -> Child | None:
        return next((child for child in self.children if not child.alive()), None)

    def print_summary(self) -> None:
        teacher, trainer, student = self.children
        table = Table(title="dSC is up")
        for column in ("service", "URL / process", "log"):
            table.add_column(column)
        table.add_row("teacher", self.teacher_url, str(teacher.log_path))
        table.add_row("trainer", f"pid {trainer.process.pid}", str(trainer.log_path))
        table.add_row("student", f"{self.student_url}/v1", str(student.log_path))
        Console().print(table)
        # Only tokens generated for this session are shown; configured ones are known here as digests only.
        client = self.tokens.client_key or "as configured (DSC_API_KEYS)"
        admin = self.tokens.admin_token or "as configured (DSC_ADMIN_TOKEN)"
        Console().print(f"client key:  {client}\nadmin token: {admin}\ndatabase:    {redacted_url(self.settings.resolved_database_url)}")


def run_up(settings: Settings, *, host: str = "127.0.0.1", timeout: float = 900.0) -> int:
    """Start everything, print where it is, block until Ctrl-C (or SIGTERM), then stop it all."""
    stop = {"now": False}

    def _on_signal(_signum, _frame) -> None:
        stop["now"] = True

    try:
        with LocalStack(settings, host=host) as stack:
            stack.wait_ready(timeout)  # Ctrl-C here raises KeyboardInterrupt; the stack still stops
            stack.print_summary()
            Console().print("Ctrl-C stops everything.")
            previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                while not stop["now"]:
                    child = stack.exited()
                    if child is not None:
                        console.print(f"[red]{child.name} exited[/red]; last lines of {child.log_path}:\n{child.log_tail()}")
                        return 1
                    time.sleep(0.5)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return 0
    except RuntimeError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    except KeyboardInterrupt:
        return 130
