"""What the teacher holds for its lifetime: settings, database, engine, rewards, metrics."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from services.teacher.metrics import TeacherMetrics
from shared.engines.base import Engine
from shared.sampling import RewardPool
from shared.settings import Settings

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        if self.sync_slots is None:
            self.sync_slots = threading.BoundedSemaphore(max(1, self.settings.max_concurrent_sync))

    def begin_shutdown(self) -> None:
        """The first step of shutdown, as soon as it is asked for (SIGTERM), before the server
        waits for requests in flight: stop taking work and end the work in flight. Workers hand
        their job back at the next phase; an owned engine is closed at once (in a thread, so a
        signal handler returns immediately), so every generate in flight ends with EngineClosed
        and synchronous calls answer 503 instead of holding the shutdown up."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("teacher shutting down: handing jobs back, ending the work in flight")
        if self.owns_engine and self.engine is not None:
            threading.Thread(target=self.close_engine, name="engine-close", daemon=True).start()

    def close_engine(self) -> None:
        """Close an owned engine (idempotent; a second call waits for the first)."""
        if self.owns_engine and self.engine is not None:
            try:
                self.engine.close()
            except Exception:
                log.exception("closing the teacher engine failed")
