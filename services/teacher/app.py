"""The teacher service: the critique→revise sampler behind a REST API (DESIGN §5)."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.teacher.routes import distillations, health, jobs, pairs, sampling, students, tasks
from services.teacher.state import TeacherState
from shared import __version__
from shared.db.session import make_engine, session_factory, upgrade
from shared.engines import create_engine
from shared.engines.base import Engine
from shared.sampling import RewardPool
from shared.settings import Settings
from shared.web.errors import install_error_handlers
from shared.web.middleware import HttpMetrics, RequestContextMiddleware

log = logging.getLogger(__name__)


def _load_engine(state: TeacherState) -> None:
    try:
        state.engine = create_engine(state.settings, state.settings.teacher_model)
        state.rewards = RewardPool(judge_engine=state.engine)
        state.ready.set()
    except Exception as exc:  # readyz reports it; the process stays up to say why
        log.exception("teacher engine failed to load")
        state.engine_error = f"engine failed to load: {exc}"


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """Build the teacher app. `engine` lets a caller share an already loaded engine (tests)."""
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        url = settings.resolved_database_url
        upgrade(url)
        db_engine = make_engine(url)
        state = TeacherState(settings=settings, db_engine=db_engine, sessions=session_factory(db_engine), registry=registry)
        app.state.teacher = state
        app.state.settings = settings
        if engine is not None:
            state.engine, state.rewards = engine, RewardPool(judge_engine=engine)
            state.ready.set()
        else:
            threading.Thread(target=_load_engine, args=(state,), name="engine-loader", daemon=True).start()
        workers = jobs.start_workers(state)
        try:
            yield
        finally:
            state.stopping.set()
            jobs.stop_workers(workers)
            if engine is None and state.engine is not None:
                state.engine.close()
            db_engine.dispose()

    app = FastAPI(title="dSC teacher", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(registry, "teacher"), max_body_bytes=settings.max_body_bytes)
    for module in (health, tasks, sampling, jobs, pairs, distillations, students):
        app.include_router(module.router)
    return app
