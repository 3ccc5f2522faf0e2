"""Memory a process tree holds (this process, the services it started, their engine processes),
sampled in the background while work runs: `dsc demo` and bench/served_cost.py print the peak.

Proportional set size (PSS) summed over the tree: a page shared by several processes (torch's and
vLLM's libraries, mapped by every engine process) counts once, split among them, so the sum is
what the tree holds. Resident set size (RSS) summed would count each shared page once per process.
"""

from __future__ import annotations

import os
import threading

import psutil


def tree_memory(pid: int) -> int:
    """Bytes (PSS) the process `pid` and all its descendants hold now; RSS where PSS cannot be read."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.AccessDenied:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        except psutil.Error:  # exited meanwhile
            pass
    return total


class PeakMemory:
    """A context that samples the memory of a process tree (default: this process's) every `every_s`."""

    def __init__(self, pid: int | None = None, every_s: float = 1.0) -> None:
        self.pid = pid or os.getpid()
        self.every_s = every_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, tree_memory(self.pid))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return round(self.peak_bytes / 2**30, 2)
