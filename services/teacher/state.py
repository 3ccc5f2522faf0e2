"""What the teacher holds for its lifetime: settings, database, engine, rewards, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from shared.engines.base import Engine
from shared.sampling import RewardPool
from shared.settings import Settings


@dataclass
class TeacherState:
    settings: Settings
    db_engine: DbEngine
    sessions: sessionmaker[Session]
    registry: CollectorRegistry
    engine: Engine | None = None  # set once the model is loaded; /readyz is 503 until then
    rewards: RewardPool | None = None
    engine_error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
