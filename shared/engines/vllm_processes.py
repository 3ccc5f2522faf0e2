"""The processes of a vLLM engine: whether its engine core still lives (and why not), and ending
what is left of them after a shutdown (an orphaned worker would otherwise keep its memory, on a GPU
its device memory, from a new engine). Used by the teacher's engine and the student's runtime."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def async_llm_death(engine) -> str | None:
    """Why a vLLM `AsyncLLM` can no longer generate, or None while it can."""
    try:
        if not engine.errored:
            return None
    except Exception as exc:  # its state cannot even be read
        return f"vLLM's engine state cannot be read: {type(exc).__name__}: {exc}"
    try:
        exited = engine.engine_core.resources.engine_manager.finished_procs()
    except Exception:
        exited = {}
    if exited:
        return "vLLM's engine core process " + ", ".join(f"{name} {_describe_exit(code)}" for name, code in sorted(exited.items()))
    return "vLLM's engine core failed (EngineDeadError; the log above it has the cause)"


def is_engine_dead_error(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError) or isinstance(error.__cause__, EngineDeadError)


class EngineProcesses:
    """The processes one vLLM engine started (its engine core, the core's workers), found as
    this process's new `VLLM::` descendants while the engine starts. `reap()` ends those still
    running after the engine was shut down: when the engine core is killed its worker is
    orphaned and may keep running (and holding memory) for a while."""

    def __init__(self) -> None:
        self._before = self._descendants()
        self.processes: list = []

    @staticmethod
    def _descendants() -> dict[int, object]:
        try:
            import psutil

            return {child.pid: child for child in psutil.Process().children(recursive=True)}
        except Exception:  # psutil missing or /proc unreadable: nothing to track
            return {}

    def started(self) -> None:
        """Call once the engine is up (or failed to start): remember the engine's own processes."""
        new = [proc for pid, proc in self._descendants().items() if pid not in self._before]
        self.processes = [proc for proc in new if _is_vllm_process(proc)]
        self._before = {}

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.processes]

    def reap(self, timeout: float = 5.0) -> None:
        try:
            self._reap(timeout)
        except Exception:
            log.warning("ending the processes left by a vLLM engine failed", exc_info=True)

    def _reap(self, timeout: float) -> None:
        import psutil

        alive = [proc for proc in self.processes if proc.is_running()]
        for proc in alive:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _gone, left = psutil.wait_procs(alive, timeout=timeout)
        for proc in left:
            log.warning("vLLM process %s (pid %d) outlived its engine; killing it", _title(proc), proc.pid)
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=timeout)


_START_LOCK = threading.Lock()


@contextmanager
def engine_processes() -> Iterator[EngineProcesses]:
    """Track the processes an engine start creates. Starts in one process are serialised, so
    each new process is attributed to the engine that started it."""
    with _START_LOCK:
        tracker = EngineProcesses()
        try:
            yield tracker
        finally:
            tracker.started()


def _title(proc) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except Exception:
        return "?"


def _is_vllm_process(proc) -> bool:
    return _title(proc).startswith("VLLM::")
