"""What the teacher holds for its lifetime: settings, database, engine, rewards, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from services.teacher.metrics import TeacherMetrics
from shared.engines.base import Engine
from shared.sampling import RewardPool
from shared.settings import Settings


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
    # Synchronous sampling calls in flight; a full semaphore answers 429 instead of queueing.
    sync_slots: threading.BoundedSemaphore | None = None

    def __post_init__(self) -> None:
        if self.sync_slots is None:
            self.sync_slots = threading.BoundedSemaphore(max(1, self.settings.max_concurrent_sync))
