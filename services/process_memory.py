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


def _held(process: psutil.Process) -> int:
    """Bytes `process` holds: its PSS, or its RSS where PSS cannot be read; 0 once it has exited."""
    try:
        info = process.memory_full_info()
        return getattr(info, "pss", info.rss)
    except psutil.AccessDenied:
        try:
            return process.memory_info().rss
        except psutil.Error:
            return 0
    except psutil.Error:
        return 0


def tree_memory(pid: int) -> dict[str, int]:
    """Bytes (PSS) held now by the process `pid` ("self") and by each of its children's whole subtrees,
    keyed by the child's command line (a service and its engine processes count together)."""
    try:
        root = psutil.Process(pid)
        children = root.children()
    except psutil.Error:
        return {}
    held = {"self": _held(root)}
    for child in children:
        try:
            name = _name(child)
            subtree = [child, *child.children(recursive=True)]
        except psutil.Error:
            continue
        held[name] = held.get(name, 0) + sum(_held(process) for process in subtree)
    return held


def _name(process: psutil.Process) -> str:
    """A child's name for the breakdown: `services.cli teacher serve` → "teacher"."""
    command = process.cmdline()
    if "services.cli" in command:
        return " ".join(command[command.index("services.cli") + 1:][:1])
    return " ".join(command)[:60] or process.name()


class PeakMemory:
    """A context that samples the memory of a process tree (default: this process's) every `every_s`."""

    # Every 5 s: reading PSS makes the kernel walk each process's page tables (~20% of a core at 1 s
    # with a whole stack's engines), and the peaks worth seeing (engines loaded) last far longer.
    def __init__(self, pid: int | None = None, every_s: float = 5.0) -> None:
        self.pid = pid or os.getpid()
        self.every_s = every_s
        self.peak_bytes = 0
        self.at_peak: dict[str, int] = {}  # what each child subtree held when the peak was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            held = tree_memory(self.pid)
            total = sum(held.values())
            if total > self.peak_bytes:
                self.peak_bytes, self.at_peak = total, held
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

    def breakdown(self) -> str:
        """`teacher 2.7, student 4.1, ... GiB` at the peak."""
        return ", ".join(f"{name} {held / 2**30:.1f}" for name, held in sorted(self.at_peak.items(), key=lambda item: -item[1])) + " GiB"
