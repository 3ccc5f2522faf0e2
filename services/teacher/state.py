"""What the teacher holds for its lifetime: settings, database, engine, rewards, metrics.

Engine health. An engine that dies (vLLM's engine core killed, out of memory, a CUDA error) is
noticed by whoever meets it first: a job worker or synchronous call whose generate raises
`EngineDead`, /readyz, or the watchdog thread that polls the engine every second.
`engine_died` then, once: readiness turns 503 with the reason, workers hand their batch back without
counting a failure and stop claiming, and per `on_engine_death` the process exits with status 75
(ENGINE_DEAD_EXIT_CODE) for its orchestrator to restart it, or builds a new engine in place.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from services.teacher.metrics import TeacherMetrics
from services.teacher.student_engines import StudentEngines
from shared.db.session import read_session_factory
from shared.engines.base import ENGINE_DEAD_EXIT_CODE, Engine, STAYING_UP, death_response, engine_dead_reason
from shared.sampling_run import RewardPool
from shared.settings import Settings

log = logging.getLogger(__name__)

ENGINE_WATCH_SECONDS = 1.0  # how often the watchdog asks the engine whether it is alive


@dataclass
class TeacherState:
    settings: Settings
    db_engine: DbEngine
    sessions: sessionmaker[Session]
    registry: CollectorRegistry
    metrics: TeacherMetrics
    engine: Engine | None = None  # set once the model is loaded; /readyz is 503 until then
    rewards: RewardPool | None = None
    engine_error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    # True when the teacher loaded the engine itself (not handed one by a caller): it closes it.
    owns_engine: bool = False
    # Synchronous sampling calls in flight; a full semaphore answers 429 instead of queueing.
    sync_slots: threading.BoundedSemaphore | None = None
    # Why the engine died; None while it lives (or once a restart replaced it). /readyz is 503 meanwhile.
    engine_dead: str | None = None
    engine_death_action: str | None = None  # what the teacher does about it, for /readyz
    engine_restarts: int = 0
    # Ends the process with the given status (serve() sets it: stop the server, then exit). None
    # when the app is embedded (tests): a dead engine then leaves the teacher up, not ready.
    exit_process: Callable[[int], None] | None = None
    # Builds a new engine (restart mode); the app sets it when it loads the engine itself.
    build_engine: Callable[[], Engine] | None = None
    # Sessions of requests that only read: on SQLite they do not take the write lock.
    readers: sessionmaker[Session] | None = None
    # Engines of registered students that later rounds sample from (services/teacher/student_engines.py).
    student_engines: StudentEngines | None = None
    _health_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.readers is None:
            self.readers = read_session_factory(self.db_engine)
        if self.sync_slots is None:
            self.sync_slots = threading.BoundedSemaphore(max(1, self.settings.teacher.max_concurrent_sync))
        if self.student_engines is None:
            self.student_engines = StudentEngines(self.settings, self.readers, stopping=self.stopping)

    @contextmanager
    def sampling_engine(self, student_id: str | None) -> Iterator[Engine]:
        """The engine a plan samples with: the teacher's own, or the engine of the registered student it names."""
        if student_id is None:
            yield self.engine
            return
        with self.student_engines.use(student_id) as engine:
            yield engine

    def begin_shutdown(self) -> None:
        """The first step of shutdown, as soon as it is asked for (SIGTERM), before the server
        waits for requests in flight: stop taking work and end the work in flight. Workers hand
        their batch back at the next phase; an owned engine is closed at once (in a thread, so a
        signal handler returns immediately), so every generate in flight ends with EngineClosed
        and synchronous calls answer 503 instead of holding the shutdown up."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("teacher shutting down: handing job batches back, ending the work in flight")
        if self.owns_engine and self.engine is not None:
            threading.Thread(target=self.close_engine, name="engine-close", daemon=True).start()
        threading.Thread(target=self.student_engines.close, name="student-engines-close", daemon=True).start()

    def close_engine(self) -> None:
        """Close an owned engine (idempotent; a second call waits for the first)."""
        if self.owns_engine and self.engine is not None:
            try:
                self.engine.close()
            except Exception:
                log.exception("closing the teacher engine failed")

    # --- engine health -----------------------------------------------------------------------

    @property
    def engine_usable(self) -> bool:
        """The engine is loaded and not dead: workers may claim, calls may run."""
        return self.engine is not None and self.engine_dead is None

    def check_engine(self) -> str | None:
        """Ask the engine whether it is alive; act on a death. Returns why it is dead, or None."""
        if self.engine_dead is None and not self.stopping.is_set():
            reason = engine_dead_reason(self.engine)
            if reason is not None:
                self.engine_died(reason)
        return self.engine_dead

    def engine_died(self, reason: str) -> None:
        """The engine cannot generate any more: say so at /readyz, stop claiming, then exit or
        restart (on_engine_death). Idempotent: only the first report acts."""
        with self._health_lock:
            if self.engine_dead is not None or self.stopping.is_set():
                return
            self.engine_dead = reason
            response = death_response(
                self.settings.on_engine_death, rebuildable=self.owns_engine and self.build_engine is not None,
                restarts=self.engine_restarts, max_restarts=self.settings.engine_max_restarts,
                can_exit=self.exit_process is not None, restart_action="restarting the engine")
            self.engine_death_action = response.action
        self.metrics.engine_deaths.inc()
        if response.restart:
            log.error("the teacher engine died: %s; building a new one (restart %d of at most %d)",
                      reason, self.engine_restarts + 1, self.settings.engine_max_restarts)
            threading.Thread(target=self._restart_engine, name="engine-restart", daemon=True).start()
            return
        log.error("the teacher engine died: %s; %s: %s", reason, response.why, response.action)
        self.request_exit(ENGINE_DEAD_EXIT_CODE)

    def request_exit(self, code: int) -> None:
        """End the process with `code` (an orchestrator restarts it); embedded, stay up not ready."""
        if self.exit_process is not None:
            self.exit_process(code)

    def _restart_engine(self) -> None:
        old = self.engine
        try:
            if old is not None:
                old.close()  # bounded; ends what the dead engine left running
            assert self.build_engine is not None
            engine = self.build_engine()
        except Exception as exc:
            log.exception("building a new teacher engine failed")
            self.engine_error = f"the engine died ({self.engine_dead}) and could not be rebuilt: {exc}"
            self.engine_death_action = f"it could not be rebuilt ({exc}); " + ("exiting" if self.exit_process else STAYING_UP)
            self.request_exit(ENGINE_DEAD_EXIT_CODE)
            return
        if self.stopping.is_set():  # shut down while the engine was rebuilt
            engine.close()
            return
        with self._health_lock:
            self.rewards = RewardPool(judge_engine=engine, network=self.settings.network_policy())
            self.engine = engine
            self.engine_restarts += 1
            reason, self.engine_dead = self.engine_dead, None
        log.info("teacher engine rebuilt after it died (%s): %s (%s)", reason, engine.model, engine.name)


def watch_engine(state: TeacherState, interval: float = ENGINE_WATCH_SECONDS) -> threading.Thread:
    """A daemon thread that polls the engine's health until the teacher stops, so a death is
    noticed (and acted on) also while nothing is running."""

    def run() -> None:
        while not state.stopping.wait(interval):
            try:
                state.check_engine()
            except Exception:
                log.exception("engine health check failed")

    thread = threading.Thread(target=run, name="engine-watchdog", daemon=True)
    thread.start()
    return thread

