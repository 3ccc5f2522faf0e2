"""What the real CLI prints and hands its children: no database password, no configured key.

`dsc db upgrade` and `dsc up` against a real Postgres whose URL carries a password (the test server
trusts local connections, so the password is carried but not checked)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_server import free_port, wait_for
from shared.keys import hash_key

PASSWORD = "hunter2-db-pw"
DSC = [sys.executable, "-m", "services.cli"]


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user_host = rest.split("@", 1)
    return f"{scheme}://{user_host[0]}:{PASSWORD}@{user_host[1]}" if len(user_host) == 2 else url


def test_db_upgrade_prints_no_password(postgres_url, tmp_path):
    url = _with_password(postgres_url)
    env = {**os.environ, "DSC_DATA_DIR": str(tmp_path)}
    result = subprocess.run([*DSC, "db", "upgrade", "--database-url", url], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "database at head: postgresql+psycopg://postgres:***@" in result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(900)
def test_up_shows_no_password_and_hands_children_digests_only(postgres_url, tmp_path, model_store):
    client_key, admin_token = "up-client-key-3c1f", "up-admin-token-8e2d"
    env = {**os.environ, "DSC_DATA_DIR": str(tmp_path / "data"), "DSC_MODEL_STORE": str(model_store),
           "DSC_DATABASE_URL": _with_password(postgres_url), "DSC_ENGINE": "transformers", "DSC_API_KEYS": client_key,
           "DSC_ADMIN_TOKEN": admin_token, "DSC_TEACHER_PORT": str(free_port()), "DSC_STUDENT_PORT": str(free_port()),
           "DSC_JOB_WORKERS": "0", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    out_path = tmp_path / "up.out"
    with open(out_path, "wb") as out:
        up = subprocess.Popen([*DSC, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: up.poll() is not None or "Ctrl-C stops everything" in out_path.read_text(), 600, "dsc up to be ready", interval=1)
        assert up.poll() is None, out_path.read_text()
        environs = [Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace") for pid in _children(up.pid)]
        assert len(environs) == 3  # teacher, trainer, student
        for environ in environs:
            assert f"DSC_API_KEYS={hash_key(client_key)}" in environ.split("\0")
            assert client_key not in environ and admin_token not in environ
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(120)
        time.sleep(0.1)
    output = out_path.read_text()
    assert up.returncode == 0, output
    assert PASSWORD not in output and client_key not in output and admin_token not in output
    assert "postgresql+psycopg://postgres:***@" in output and "as configured (DSC_API_KEYS)" in output
