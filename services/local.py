"""`dsc up`: teacher, trainer worker and student as local processes, until Ctrl-C.

The supervisor never leaves a child behind: SIGINT, SIGTERM and SIGHUP stop every child (each in
a process group of its own, so the vLLM engine processes under it go too); a second signal while
stopping kills them at once; and each child gets SIGTERM from the kernel if the supervisor dies
without a chance to stop it (SIGKILL, a crash: Linux's parent-death signal).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from shared.db.session import redacted_url
from shared.keys import hash_key
from shared.parent_death import end_with_parent
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
        with open(self.log_path, "ab") as log:
            # Own process group: Ctrl-C in the terminal reaches us only, and we stop the children in order.
            self.process = subprocess.Popen([sys.executable, "-m", "services.cli", *self.args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=end_with_parent)  # SIGTERM when the supervisor dies

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self, client: httpx.Client) -> bool:
        if self.ready_url is None:
            return self.alive()
        try:
            return client.get(self.ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait for the child until `deadline` (monotonic), then kill what is left of its process group."""
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it, and engine processes it may have left)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) reached the supervisor."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        Child("teacher", ["teacher", "serve", "--host", host, "--port", str(settings.teacher.port)], f"{base}:{settings.teacher.port}/readyz", logs / "teacher.log"),
        Child("trainer", ["trainer", "work"], None, logs / "trainer.log"),
        Child("student", ["student", "serve", "--host", host, "--port", str(settings.student.port)], f"{base}:{settings.student.port}/readyz", logs / "student.log"),
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
        # The nested form wins over both a flat DSC_TEACHER_PORT and a nested one the caller set.
        DSC_TEACHER__PORT=str(settings.teacher.port),
        DSC_STUDENT__PORT=str(settings.student.port),
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


STOP_GRACE_SECONDS = 30.0  # for all children together, before SIGKILL


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
        self.teacher_url = f"http://{host}:{settings.teacher.port}"
        self.student_url = f"http://{host}:{settings.student.port}"

    def __enter__(self) -> "LocalStack":
        self._stopping = False
        self._previous_handlers = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        env = child_env(self.settings, self.tokens)
        try:
            for child in self.children:
                child.start(env)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self._stopping = True
        console.print("stopping …")
        try:
            for child in reversed(self.children):
                child.terminate()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for child in reversed(self.children):
                child.wait(deadline)
        finally:
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if not self._stopping:
            self._stopping = True
            raise StopRequested(signal.Signals(signum).name)
        console.print(f"{signal.Signals(signum).name} while stopping: killing the services now")
        for child in self.children:
            child.kill()

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
    """Start everything, print where it is, block until Ctrl-C (or SIGTERM, SIGHUP), then stop it
    all. 0 after a stop once ready, 130 when stopped during start-up, 1 when a service failed."""
    ready = False
    try:
        with LocalStack(settings, host=host) as stack:
            stack.wait_ready(timeout)
            ready = True
            stack.print_summary()
            Console().print("Ctrl-C stops everything.")
            while (child := stack.exited()) is None:
                time.sleep(0.5)
            console.print(f"[red]{child.name} exited[/red]; last lines of {child.log_path}:\n{child.log_tail()}")
            return 1
    except RuntimeError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    except KeyboardInterrupt:  # StopRequested included
        return 0 if ready else 130
