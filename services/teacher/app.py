"""The teacher service: the critique→revise sampler behind a REST API (DESIGN §5).

Start-up (lifespan): migrate the database, load the engine in a thread (/readyz is 503 until it
is in), start the job workers. Shutdown: stop the workers (a batch in flight is handed back to
the queue), close the engine.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.teacher import worker
from services.teacher.logs import RequestIdMiddleware, configure_json_logging
from services.teacher.metrics import QueueCollector, TeacherMetrics
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
        engine = create_engine(state.settings, state.settings.teacher_model)
        state.rewards = RewardPool(judge_engine=engine)
        state.engine = engine
        state.ready.set()
        log.info("teacher engine loaded: %s (%s)", engine.model, engine.name)
    except Exception as exc:  # readyz reports it; the process stays up to say why
        log.exception("teacher engine failed to load")
        state.engine_error = f"engine failed to load: {exc}"


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """Build the teacher app. `engine` lets a caller share an already loaded engine (tests)."""
    registry = CollectorRegistry()
    metrics = TeacherMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        url = settings.resolved_database_url
        upgrade(url)
        db_engine = make_engine(url)
        sessions = session_factory(db_engine)
        state = TeacherState(settings=settings, db_engine=db_engine, sessions=sessions, registry=registry, metrics=metrics)
        queue_collector = QueueCollector(sessions)
        registry.register(queue_collector)
        app.state.teacher = state
        app.state.settings = settings
        if engine is not None:
            state.rewards = RewardPool(judge_engine=engine)
            state.engine = engine
            state.ready.set()
        else:
            threading.Thread(target=_load_engine, args=(state,), name="engine-loader", daemon=True).start()
        workers = worker.start_workers(state)
        try:
            yield
        finally:
            state.stopping.set()
            worker.stop_workers(workers)
            registry.unregister(queue_collector)
            if engine is None and state.engine is not None:
                state.engine.close()
            db_engine.dispose()

    app = FastAPI(
        title="dSC teacher",
        version=__version__,
        lifespan=lifespan,
        description="Critique→revise sampling (distilled Self-Critique) as a service: tasks, synchronous sampling, "
        "background jobs, accepted pairs, distillations and students. Client keys open /v1/*; the admin token "
        "opens /admin/* and task creation.",
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Added first = runs innermost: it reads the request id the outer middleware assigned.
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(registry, "teacher"), max_body_bytes=settings.max_body_bytes)
    for module in (health, tasks, sampling, jobs, pairs, distillations, students):
        app.include_router(module.router)
    return app


def serve(settings: Settings, *, host: str, port: int, log_level: str = "INFO") -> None:
    """`dsc teacher serve`: JSON logs on stderr, uvicorn in this process (workers are threads)."""
    import uvicorn

    configure_json_logging(log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=30)
