"""A real `dsc teacher serve` process for the benchmarks: its environment, a fresh Postgres database
of its own, start it on a free loopback port, wait until it answers, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent


def teacher_env(database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment plus what every benchmark teacher needs: this checkout's code, no hub, the
    prepared model store, the transformers engine, the given database and DSC_* `settings`."""
    from shared.settings import Settings

    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DSC_DATABASE_URL": database_url,
            "DSC_DATA_DIR": str(data_dir), "DSC_MODEL_STORE": str(Settings().resolved_model_store), "DSC_ENGINE": "transformers",
            **settings}


@contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """A new, migrated database `name` on the Postgres server at `server_url` (an earlier one of that
    name is dropped first); dropped again afterwards. Yields its URL."""
    from shared.db.session import upgrade

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    drop = text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    try:
        with admin.connect() as connection:
            connection.execute(drop)
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = f"{server_url.rsplit('/', 1)[0]}/{name}"
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(drop)
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_teacher(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "teacher", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 300) -> None:
    """Until /readyz answers 200: the engine is loaded and the database answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"teacher exited before it was ready:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"teacher not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
