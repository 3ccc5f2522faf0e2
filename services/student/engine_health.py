"""Whether the student's engine lives, and what the service does when it dies.

A runtime whose engine dies (vLLM's engine core killed, out of memory, a CUDA error) is noticed
by the request that meets it or by `watch` (every second): from then on /readyz is 503 with the
reason, requests in flight and new ones are answered 503, and per `on_engine_death` the process
exits with status 75 for its orchestrator to restart it (`exit_process`, set by `serve`), or
every runtime is closed and the models are loaded afresh.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from services.student.metrics import StudentMetrics
from services.student.serving_models import ServedModels
from shared.engines.base import ENGINE_DEAD_EXIT_CODE, STAYING_UP, death_response, engine_dead_reason
from shared.settings import Settings

log = logging.getLogger(__name__)

ENGINE_WATCH_SECONDS = 1.0  # how often watch asks the runtimes whether they are alive


class EngineHealth:
    """Watches the runtimes of `models`; on a death, turns readiness off and exits or restarts."""

    def __init__(self, settings: Settings, models: ServedModels, metrics: StudentMetrics) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.dead: str | None = None  # why the engine died; None while it lives (or once restarted)
        self.death_action: str | None = None  # what the service does about it, for /readyz
        self.restarts = 0
        # Ends the process with the given status (serve sets it). None when embedded (tests):
        # a dead engine then leaves the service up, not ready.
        self.exit_process: Callable[[int], None] | None = None

    @property
    def ready(self) -> bool:
        """The models are loaded (serving: the base, and the registry's active students looked up) and the engine alive."""
        return self.models.serving and self.dead is None

    def check(self) -> str | None:
        """Ask each runtime whether its engine is alive; act on a death. Returns why the engine
        is dead, or None. On the event loop."""
        if self.dead is None and not self.models.closing:
            for runtime in self.models.runtimes():
                reason = engine_dead_reason(runtime)
                if reason is not None:
                    self.engine_died(reason)
                    break
        return self.dead

    def engine_died(self, reason: str) -> None:
        """Readiness 503 from now on, then exit or restart (on_engine_death). Only the first
        report acts. On the event loop."""
        if self.dead is not None or self.models.closing:
            return
        self.dead = reason
        settings = self.settings
        response = death_response(settings.on_engine_death, rebuildable=self.models.owns_runtimes, restarts=self.restarts,
                                  max_restarts=settings.engine_max_restarts, can_exit=self.exit_process is not None,
                                  restart_action="loading the models afresh")
        self.death_action = response.action
        self.metrics.engine_deaths.inc()
        if response.restart:
            log.error("the student engine died: %s; loading the models afresh (restart %d of at most %d)",
                      reason, self.restarts + 1, settings.engine_max_restarts)
            self.models.spawn(self._restart())
            return
        log.error("the student engine died: %s; %s: %s", reason, response.why, response.action)
        self._exit(ENGINE_DEAD_EXIT_CODE)

    def _exit(self, code: int) -> None:
        """End the process with `code` (an orchestrator restarts it); embedded, stay up not ready."""
        if self.exit_process is not None:
            self.exit_process(code)

    async def _restart(self) -> None:
        reason = self.dead
        models = self.models
        if not await models.load_afresh(f"the engine died ({reason}); loading the models afresh"):
            # load_afresh recorded why in load_error
            log.error("the student could not load its models again after the engine died (%s)", models.load_error)
            self.death_action = f"the models could not be loaded again ({models.load_error}); " + (
                "exiting" if self.exit_process else STAYING_UP)
            self._exit(ENGINE_DEAD_EXIT_CODE)
            return
        self.restarts += 1
        self.dead = None
        log.warning("student models loaded afresh after the engine died (%s)", reason)

    async def watch(self, interval: float = ENGINE_WATCH_SECONDS) -> None:
        """Notice a dead engine also while no request runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:
                log.exception("engine health check failed")
