"""The student's served models, with no HTTP in them: the runtimes, hot swap on promotion, and
the routing table (`routing.py`) that names them.

Hot swap. A promotion (seen by polling the registry, or POST /admin/reload) loads the new student
beside the old one under a new, unique adapter name, then replaces the routing table in one
assignment. A request resolves its model once, when admitted, and pins it: requests already
admitted finish on the old model, which is unloaded when its last request ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Coroutine

from sqlalchemy.orm import Session, sessionmaker

from services.student.adapters import validate_adapter
from services.student.metrics import StudentMetrics
from services.student.protocol import ModelCard
from services.student.routing import ServedModel, lookup, model_cards, routing_table
from services.student.runtimes.base import Runtime
from shared.db.models import Student
from shared.db.outages import first_line
from shared.db.queue import worker_owner
from shared.distillation.registry import REPORT_EVERY_S, active_students, forget_replica, report_serving
from shared.errors import DscError, InvalidRequest, NotReady
from shared.model_store import merged_model, resolve_model
from shared.settings import Settings

log = logging.getLogger(__name__)

LOAD_RETRY_FIRST_S, LOAD_RETRY_MAX_S = 5.0, 300.0  # backoff of a student that failed to load (an I/O blip heals)


@dataclass(frozen=True)
class FailedLoad:
    """A registry student that could not be loaded; the poller tries again at `retry_at`."""

    message: str
    attempts: int
    retry_at: float

    @classmethod
    def after(cls, earlier: "FailedLoad | None", message: str, now: float) -> "FailedLoad":
        """The record of one more failed try: the wait doubles from LOAD_RETRY_FIRST_S up to LOAD_RETRY_MAX_S."""
        attempts = (earlier.attempts if earlier else 0) + 1
        return cls(message, attempts, now + min(LOAD_RETRY_FIRST_S * 2 ** (attempts - 1), LOAD_RETRY_MAX_S))


RuntimeFactory = Callable[[Path], Runtime]


class ServedModels:
    """Owns the runtimes and the routing table; loads, swaps and unloads the models."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: StudentMetrics,
        runtime_factory: RuntimeFactory,
        sessions: sessionmaker[Session] | None = None,
        reports: sessionmaker[Session] | None = None,
        model: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions  # None: standalone (--model), no registry
        self.reports = reports  # where this process reports what it serves (registry.report_serving)
        self.replica = worker_owner("student")
        self._reported: tuple[list[str], dict[str, str]] | None = None
        self._reported_at = 0.0
        self.model_reference = model or settings.student_base_model
        self.standalone = model is not None
        self.runtime_factory = runtime_factory
        self.metrics = metrics
        self.metrics.queue_depth.set_function(self.queue_depth)
        self.base: ServedModel | None = None
        self.table: dict[str, ServedModel] = {}
        self.students: dict[str, ServedModel] = {}  # student id → loaded model
        self.failed: dict[str, FailedLoad] = {}  # student id → why it could not be loaded (retried with backoff)
        self.load_error: str | None = None
        # The registry read once since the base model loaded. Until then the service is not ready:
        # a restart with an active student must not answer as `student` from the base model meanwhile.
        self.synced = False
        self._reload_lock = asyncio.Lock()
        self.registry_problem: str | None = None
        self._background: set[asyncio.Task] = set()
        self.owns_runtimes = True  # False when start() was handed a loaded runtime (tests)
        self.closing = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, runtime: Runtime | None = None) -> None:
        """Load the base model (or take a loaded runtime), then the active students."""
        if runtime is not None:
            self.owns_runtimes = False
        try:
            if runtime is None:
                path = await asyncio.to_thread(resolve_model, self.model_reference, self.settings.resolved_model_store)
                runtime = await asyncio.to_thread(self.runtime_factory, path)
            self.base = ServedModel(id=self._base_name(), kind="base", runtime=runtime)
            self._publish({})
        except Exception as exc:
            log.exception("student model failed to load")
            self.load_error = f"model failed to load: {exc}"
            return
        if self.sessions is not None:
            try:
                await self.reload()
            except NotReady:
                pass  # registry unreadable for now: not ready until the poller reads it

    async def close(self) -> None:
        self.closing = True
        for task in list(self._background):
            task.cancel()
        for runtime in self.runtimes():
            await runtime.close()

    async def load_afresh(self, why: str) -> bool:
        """Close every runtime and load the models again (after the engine died). Returns whether
        the base model is served again; if not, `load_error` says why."""
        async with self._reload_lock:  # no registry reload meanwhile
            runtimes = self.runtimes()
            self.base, self.table, self.students = None, {}, {}
            self.synced = False
            self.failed.clear()
            self.load_error = why
            for runtime in runtimes:
                try:
                    await runtime.close()
                except Exception:
                    log.exception("closing a dead runtime failed")
        self.load_error = None
        await self.start()
        return self.base is not None and not self.closing

    def runtimes(self) -> list[Runtime]:
        models = [*self.students.values(), *([self.base] if self.base else [])]
        return list({id(m.runtime): m.runtime for m in models}.values())

    def spawn(self, coroutine: Coroutine) -> None:
        """Run `coroutine` in the background until it ends or the models close."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _base_name(self) -> str:
        reference = self.model_reference
        path = Path(reference).expanduser()
        return path.name if path.is_dir() else reference

    # ---- registry and hot swap --------------------------------------------------------------

    def _active_students(self) -> list[Student] | None:
        """Active students from the registry, or None when the registry cannot be read now
        (keep serving what is loaded)."""
        assert self.sessions is not None
        try:
            with self.sessions() as session:
                return active_students(session)
        except Exception as exc:  # database down, or not migrated yet on a fresh install
            message = str(exc).splitlines()[0]
            # once per distinct problem, not every poll
            (log.debug if message == self.registry_problem else log.warning)("cannot read the student registry: %s", message)
            self.registry_problem = message
            return None

    async def reload(self, *, retry_failed: bool = False) -> dict:
        """Bring the served students in line with the registry. Returns what changed.
        A student that failed to load is tried again by the poller once its backoff is over
        (5 s, doubling, at most 5 min), and at once by an explicit reload (retry_failed)."""
        if retry_failed:
            self.failed.clear()
        if self.base is None:
            raise NotReady(self.load_error or "the student model is still loading; retry shortly")
        if self.sessions is None:
            return {"loaded": [], "retired": [], "errors": {}, "models": sorted(self.table)}
        async with self._reload_lock:
            rows = await asyncio.to_thread(self._active_students)
            if rows is None:
                raise NotReady("the student registry (database) cannot be read now; still serving the loaded models")
            wanted = {row.id: row for row in rows}
            self.failed = {sid: failure for sid, failure in self.failed.items() if sid in wanted}  # demoted meanwhile: moot
            served: dict[str, ServedModel] = {}
            loaded, errors = [], {}
            # Loaded students first: they keep their places within student.max_merged.
            for student_id, row in sorted(wanted.items(), key=lambda item: item[0] not in self.students):
                if student_id in self.students:
                    served[student_id] = self.students[student_id]
                    continue
                earlier = self.failed.get(student_id)
                if earlier is not None and time.monotonic() < earlier.retry_at:
                    errors[student_id] = earlier.message
                    continue
                try:
                    served[student_id] = await self._load_student(row, sum(m.owns_runtime for m in served.values()))
                    loaded.append(served[student_id].id)
                    if self.failed.pop(student_id, None) is not None:
                        log.info("student %s (%s v%s) loaded after %d failed tries", row.id, row.name, row.version, earlier.attempts)
                except Exception as exc:
                    message = exc.message if isinstance(exc, DscError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
                    now = time.monotonic()
                    failure = self.failed[student_id] = FailedLoad.after(earlier, message, now)
                    errors[student_id] = message
                    log.error("student %s (%s v%s) not loaded (try %d; next in %.0f s): %s", row.id, row.name, row.version,
                              failure.attempts, failure.retry_at - now, message, exc_info=not isinstance(exc, DscError))
            # A task whose new student failed keeps its previous one rather than falling to the base model.
            tasks_served = {model.task for model in served.values()}
            for student_id, model in self.students.items():
                if student_id not in served and model.task not in tasks_served and wanted and any(
                    row.task_name == model.task and row.id in self.failed for row in wanted.values()
                ):
                    served[student_id] = model
            retired = [model for sid, model in self.students.items() if sid not in served]
            self._publish(served)  # the atomic switch
            if loaded:
                self.metrics.swaps.inc()
            for model in retired:
                self._retire(model)
            self.synced = True
            await self.report()
            return {"loaded": loaded, "retired": [m.id for m in retired], "errors": errors, "models": sorted(self.table)}

    async def _load_student(self, row: Student, merged_engines: int) -> ServedModel:
        """Load one registry student: as an adapter over the base model's runtime where that runtime
        serves adapters and shares the student's base, else from merged weights (the trainer's, or
        base + adapter merged here once, cached in the model store) in a runtime of its own, while
        fewer than student.max_merged of those (`merged_engines`) run."""
        assert self.base is not None
        base_runtime = self.base.runtime
        store = self.settings.resolved_model_store
        base_path = await asyncio.to_thread(resolve_model, row.base_model, store)
        public = f"{row.name}-v{row.version}"
        promoted = row.promoted_at.timestamp() if row.promoted_at else time.time()
        common = dict(kind="student", task=row.task_name, student_id=row.id, version=row.version, promoted_at=promoted)
        adapter_dir = Path(row.adapter_path) if row.adapter_path else None
        if adapter_dir is not None:
            await asyncio.to_thread(validate_adapter, adapter_dir, base_path, max_rank=self.settings.student.max_lora_rank)
            if base_runtime.serves_adapters and Path(base_path).resolve() == Path(base_runtime.base_path).resolve():
                engine_name = f"{public}-{uuid.uuid4().hex[:8]}"  # never reuse an adapter name (docs/architecture.md §10)
                await base_runtime.load_adapter(engine_name, adapter_dir)
                return ServedModel(id=public, runtime=base_runtime, adapter=engine_name, **common)
        elif not row.merged_path:
            raise InvalidRequest(f"student {public} has neither an adapter nor a merged model")
        limit = self.settings.student.max_merged
        if merged_engines >= limit:
            raise InvalidRequest(
                f"student {public} runs from merged weights in an engine of its own, and {merged_engines} such students "
                f"are served already (student.max_merged = {limit}, DSC_STUDENT_MAX_MERGED); raise the limit if memory "
                "allows, or serve adapters (DSC_STUDENT_SERVE_STUDENTS_AS=adapter)"
            )
        if row.merged_path:
            merged = await asyncio.to_thread(resolve_model, row.merged_path, store)
        else:
            merged = await asyncio.to_thread(merged_model, base_path, adapter_dir, store, row.id)
        runtime = await asyncio.to_thread(self.runtime_factory, merged)
        return ServedModel(id=public, runtime=runtime, owns_runtime=True, **common)

    def _publish(self, students: dict[str, ServedModel]) -> None:
        assert self.base is not None
        table = routing_table(self.base, students)
        self.table, self.students = table, students  # one assignment: requests see old or new, never half
        self.metrics.active_model.clear()
        for model in {id(m): m for m in table.values()}.values():
            self.metrics.active_model.labels(model.id, model.kind).set(1)

    def _retire(self, model: ServedModel) -> None:
        model.retired = True
        if model.inflight == 0:
            self.spawn(self._unload(model))

    async def _unload(self, model: ServedModel) -> None:
        try:
            if model.owns_runtime:
                await model.runtime.close()
            elif model.adapter:
                await model.runtime.unload_adapter(model.adapter)
            log.info("unloaded %s", model.id)
        except Exception:
            log.exception("unloading %s failed", model.id)

    async def poll_registry(self) -> None:
        """Pick up promotions made through the teacher without a manual reload."""
        while True:
            await asyncio.sleep(self.settings.student.poll_seconds)
            try:
                await self.reload()
            except NotReady:
                pass
            except Exception:
                log.exception("registry poll failed")

    async def report(self) -> None:
        """Tell the registry what this process serves, when it changed or REPORT_EVERY_S passed
        (every reload ends here). Advisory: while the database is away the next poll tries again."""
        if self.reports is None:
            return
        state = (sorted(self.students), {sid: failure.message for sid, failure in self.failed.items()})
        if state == self._reported and time.monotonic() - self._reported_at < REPORT_EVERY_S:
            return
        try:
            await asyncio.to_thread(report_serving, self.reports, self.replica, *state)
        except Exception as exc:
            log.debug("could not report the serving state: %s", first_line(exc))
            return
        self._reported, self._reported_at = state, time.monotonic()

    async def forget(self) -> None:
        """On a clean stop: this replica serves nothing any more."""
        if self.reports is not None and self._reported is not None:
            try:
                await asyncio.to_thread(forget_replica, self.reports, self.replica)
            except Exception as exc:
                log.debug("could not withdraw the serving state: %s", first_line(exc))

    # ---- routing ----------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """The base model is loaded and, with a registry, the active students were looked up."""
        return self.base is not None and (self.sessions is None or self.synced)

    def model_cards(self) -> list[ModelCard]:
        return model_cards(self.table, standalone=self.standalone) if self.serving else []

    def resolve(self, name: str) -> ServedModel:
        """The model served under `name` now. The caller has checked the engine's health."""
        if self.base is None:
            # The load error itself can name files and URLs: it is in the log and, for admins, at /readyz.
            raise NotReady("the student model failed to load; see the student's log" if self.load_error
                           else "the student model is still loading; retry shortly")
        if not self.serving:
            raise NotReady("the student registry has not been read yet (is the database reachable?); retry shortly")
        return lookup(self.table, name)

    def pin(self, model: ServedModel) -> None:
        """A request runs on `model`: it stays loaded until unpinned, even once retired."""
        model.inflight += 1

    def unpin(self, model: ServedModel) -> None:
        model.inflight -= 1
        if model.retired and model.inflight == 0:
            self.spawn(self._unload(model))

    def queue_depth(self) -> int:
        runtimes = {id(m.runtime): m.runtime for m in self.table.values()}
        return sum(runtime.queue_depth() for runtime in runtimes.values())
