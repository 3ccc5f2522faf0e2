"""The teacher service: the critique→revise sampler behind a REST API (docs/architecture.md §2).

Start-up (lifespan): migrate the database, load the engine in a thread (/readyz is 503 until it
is in), start the job workers. Shutdown, in bounded time even with work in flight: on SIGTERM
(`serve`) at once, else when the lifespan ends, the state's `begin_shutdown` sets `stopping` and
closes the engine, so generate calls in flight end (synchronous calls answer 503, workers hand
their batch back to the queue); then the server drains, the workers are joined, the database closed.

A dead engine (vLLM's engine core killed, out of memory, a CUDA error; services/teacher/state.py)
turns /readyz 503 with the reason; workers hand their batch back without counting a failure; under
`serve` the process then exits with status 75 (DSC_ON_ENGINE_DEATH=exit, the default) or builds a
new engine (restart).
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.teacher import worker
from services.teacher.console import create_console
from services.teacher.metrics import QueueCollector, TeacherMetrics
from services.teacher.limits import schema_limits
from services.teacher.routes import distillations, evaluations, health, jobs, pairs, sampling, students, tasks
from services.teacher.state import TeacherState, watch_engine
from shared import __version__
from shared.db.session import make_engine, session_factory, upgrade
from shared.engines import create_engine
from shared.engines.base import Engine
from shared.logs import UVICORN_LOGGING, configure_logging, no_log_ids
from shared.sampling_run import RewardPool
from shared.settings import Settings
from shared.web.proxies import UVICORN_PROXY_HEADERS_OFF
from shared.web.ratelimit import FailureThrottle, KeyRateLimiter
from shared.web.errors import install_error_handlers
from shared.web.process import exit_after
from shared.web.middleware import HttpMetrics, RequestContextMiddleware
from shared.web.routing import document_errors_as_json, document_limits

log = logging.getLogger(__name__)


SHUTDOWN_GRACE_S = 15  # the most uvicorn waits for requests in flight after SIGTERM


def _build_engine(settings: Settings) -> Engine:
    if settings.teacher.threads:
        import torch

        torch.set_num_threads(settings.teacher.threads)  # process-wide: the teacher's engine and rewards
    return create_engine(settings, settings.teacher_model)


def _load_engine(state: TeacherState) -> None:
    try:
        engine = _build_engine(state.settings)
        if state.stopping.is_set():  # shut down while the model loaded
            engine.close()
            return
        state.rewards = RewardPool(judge_engine=engine, network=state.settings.network_policy())
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
        state = TeacherState(settings=settings, db_engine=db_engine, sessions=sessions, registry=registry, metrics=metrics,
                             owns_engine=engine is None, exit_process=getattr(app.state, "exit_process", None))
        if engine is None:
            state.build_engine = lambda: _build_engine(settings)
        queue_collector = QueueCollector(sessions)
        registry.register(queue_collector)
        app.state.teacher = state
        app.state.settings = settings
        if engine is not None:
            state.rewards = RewardPool(judge_engine=engine, network=settings.network_policy())
            state.engine = engine
            state.ready.set()
        else:
            threading.Thread(target=_load_engine, args=(state,), name="engine-loader", daemon=True).start()
        workers = worker.start_workers(state)
        watch_engine(state)
        try:
            yield
        finally:
            state.begin_shutdown()  # already begun on SIGTERM under `serve`
            worker.stop_workers(workers)
            registry.unregister(queue_collector)
            state.close_engine()
            state.student_engines.close()
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
    app.state.rate_limiter = KeyRateLimiter.from_settings(settings)  # per key; None: DSC_RATE_LIMIT unset
    app.state.auth_throttle = FailureThrottle.from_settings(settings)  # per address; None: DSC_AUTH_FAILURE_LIMIT unset
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(registry, "teacher"), **settings.request_limits())
    for module in (health, tasks, sampling, jobs, pairs, distillations, evaluations, students):
        app.include_router(module.router)
    document_errors_as_json(app)
    document_limits(app, schema_limits(settings))
    app.mount("/console", create_console(app))
    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    """`dsc teacher serve`: logs on stderr (shared.logs), uvicorn in this process (workers are threads)."""
    import uvicorn

    configure_logging(settings)
    app = create_app(settings)
    exit_code = 0

    def exit_process(code: int) -> None:
        # The engine died: stop as on SIGTERM (work in flight handed back), then exit with `code`.
        nonlocal exit_code
        exit_code = code
        exit_after(code)  # even if the orderly shutdown hangs
        state = getattr(app.state, "teacher", None)
        if state is not None:
            state.begin_shutdown()
        server.should_exit = True  # not handle_exit: uvicorn re-raises the signals it handled

    app.state.exit_process = exit_process

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn first waits for the requests in flight, and only then runs the lifespan's
            # shutdown: begin it now, or a long synchronous call would hold the whole exit up.
            state = getattr(app.state, "teacher", None)
            if state is not None:
                with no_log_ids():  # the signal interrupted some request's task: its id is not this line's
                    state.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, **UVICORN_LOGGING,
                            **UVICORN_PROXY_HEADERS_OFF)
    server = Server(config)
    server.run()
    if exit_code:
        log.error("teacher stopped because its engine died; exit status %d", exit_code)
        sys.exit(exit_code)
