"""Fixtures of the console tests (helpers are in console_support.py)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread (two cores shared with other work: torch's default spin-waits). Restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DSC_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)
