"""Child processes that end with their parent, however the parent ends (SIGKILL included)."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def end_with_parent(sig: int = signal.SIGTERM, *, parent_pid: int | None = None) -> None:
    """Have the kernel send `sig` to this process when the thread that started it ends (Linux's
    PR_SET_PDEATHSIG; elsewhere a no-op: there the parent's own shutdown has to stop it). With
    `parent_pid`, a parent that died before this call ends this process at once."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
