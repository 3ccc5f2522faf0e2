"""`dsc teacher serve` refuses to expose an open teacher: with no keys configured it binds only
to loopback unless told --insecure (the check runs before any model loads)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_serve_refuses_a_public_bind_without_keys(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DSC_API_KEYS", "DSC_ADMIN_TOKEN")}
    env["DSC_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "teacher", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "dsc.db").exists()  # refused before touching the database
