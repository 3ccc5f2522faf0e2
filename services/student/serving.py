"""The student's serving logic, with no HTTP in it: which models are served under which names,
hot swap on promotion, request validation and limits, and chat completions as event streams.

Model names. The base model is served under its own name (e.g. `smollm2-135m-instruct`, alias
`base`). Every active student (one per task) is served as `<name>-v<version>`, with its task name
and its student id as aliases; `student` and `default` name the most recently promoted one (the
base model while none is promoted). Students that share the base model are LoRA adapters over
the one loaded base, so several are served at once.

Hot swap. A promotion (seen by polling the registry, or POST /admin/reload) loads the new student
beside the old one under a new, unique adapter name, then replaces the routing table in one
assignment. A request resolves its model once, when admitted, and pins it: requests already
admitted finish on the old model, which is unloaded when its last request ends.

Engine health. A runtime whose engine dies (vLLM's engine core killed, out of memory, a CUDA
error) is noticed by the request that meets it or by `watch_engine` (every second): from then on
/readyz is 503 with the reason, requests in flight and new ones are answered 503, and per
`on_engine_death` the process exits with status 75 for its orchestrator to restart it
(`exit_process`, set by `serve`), or every runtime is closed and the models are loaded afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session, sessionmaker

from services.student.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ModelCard,
    ResponseMessage,
    Usage,
)
from services.student.runtime import Delta, Failed, Finished, RowParams, RowStream, Runtime, validate_adapter
from shared.db.models import Student
from shared.distillation.registry import active_students
from shared.engines.base import ENGINE_DEAD_EXIT_CODE, EngineDead, engine_dead_reason, request_seed
from shared.errors import DscError, EngineError, InvalidRequest, NotFound, NotReady, Overloaded
from shared.model_store import resolve_model
from shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
ENGINE_WATCH_SECONDS = 1.0  # how often watch_engine asks the runtimes whether they are alive
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


class ContextLengthExceeded(InvalidRequest):
    """400 with OpenAI's code for a prompt that is too long."""

    code = "context_length_exceeded"


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(eq=False)
class ServedModel:
    id: str
    kind: str  # "base" | "student"
    runtime: Runtime
    adapter: str | None = None  # the engine's adapter name (unique per load); None: the runtime's own weights
    owns_runtime: bool = False  # a merged student has a runtime of its own, closed when it retires
    task: str | None = None
    student_id: str | None = None
    version: int | None = None
    promoted_at: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))
    inflight: int = 0
    retired: bool = False


@dataclass
class Completion:
    """An admitted chat completion: the model it is pinned to and one event stream per choice."""

    id: str
    model: ServedModel
    prompt_tokens: int
    streams: list[RowStream]
    started: float
    release: Callable[[], None]
    first_token_at: float | None = None
    _released: bool = False

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()

    def close(self) -> None:
        """Cancel what is left and unpin the model (idempotent)."""
        self.cancel()
        if not self._released:
            self._released = True
            self.release()

    async def events(self) -> AsyncIterator[tuple[int, Delta | Finished]]:
        """(choice index, event) pairs as they come, over all choices. Raises EngineError on failure."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: RowStream) -> None:
            async for event in stream.events():
                await merged.put((index, event))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(self.streams)
            while remaining:
                index, event = await merged.get()
                if isinstance(event, Failed):
                    if event.dead is not None:
                        raise EngineDead(event.dead)
                    raise EngineError(event.message)
                if isinstance(event, Finished):
                    remaining -= 1
                elif self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                yield index, event
        finally:
            for task in tasks:
                task.cancel()


class StudentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.completions = Counter("dsc_student_completions", "Chat completions by model and outcome", ["model", "outcome"], registry=registry)
        self.latency = Histogram(
            "dsc_student_completion_seconds", "Chat completion latency", ["model"], registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
        )
        self.ttft = Histogram(
            "dsc_student_time_to_first_token_seconds", "Time to first token", ["model"], registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
        )
        self.tokens_per_second = Histogram(
            "dsc_student_tokens_per_second", "Completion tokens per second of each completion", ["model"], registry=registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )
        self.prompt_tokens = Counter("dsc_student_prompt_tokens", "Prompt tokens", ["model"], registry=registry)
        self.completion_tokens = Counter("dsc_student_completion_tokens", "Completion tokens (rate() = tokens/s)", ["model"], registry=registry)
        self.queue_depth = Gauge("dsc_student_queue_depth", "Sequences waiting for the engine", registry=registry)
        self.pending = Gauge("dsc_student_pending_sequences", "Sequences admitted and unfinished", registry=registry)
        self.batch_size = Histogram(
            "dsc_student_batch_size", "Sequences per batched generate (transformers path)", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.active_model = Gauge("dsc_student_active_model", "1 for each model name served now", ["model", "kind"], registry=registry)
        self.rejected = Counter("dsc_student_rejected", "Completions refused before generation", ["reason"], registry=registry)
        self.swaps = Counter("dsc_student_swaps", "Routing-table switches to a newly loaded student", registry=registry)
        self.engine_deaths = Counter("dsc_student_engine_deaths", "Times the engine died under this process", registry=registry)


class StudentServing:
    """Owns the runtimes and the routing table; turns chat requests into event streams."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry,
        runtime_factory: RuntimeFactory,
        sessions: sessionmaker[Session] | None = None,
        model: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions  # None: standalone (--model), no registry
        self.model_reference = model or settings.student_base_model
        self.standalone = model is not None
        self.runtime_factory = runtime_factory
        self.metrics = StudentMetrics(registry)
        self.metrics.queue_depth.set_function(self.queue_depth)
        self.metrics.pending.set_function(lambda: self.pending)
        self.base: ServedModel | None = None
        self.table: dict[str, ServedModel] = {}
        self.students: dict[str, ServedModel] = {}  # student id → loaded model
        self.failed: dict[str, FailedLoad] = {}  # student id → why it could not be loaded (retried with backoff)
        self.pending = 0
        self.load_error: str | None = None
        self._reload_lock = asyncio.Lock()
        self._registry_problem: str | None = None
        self._background: set[asyncio.Task] = set()
        self.dead: str | None = None  # why the engine died; None while it lives (or once restarted)
        self.death_action: str | None = None  # what the service does about it, for /readyz
        self.engine_restarts = 0
        # Ends the process with the given status (serve sets it). None when embedded (tests):
        # a dead engine then leaves the service up, not ready.
        self.exit_process: Callable[[int], None] | None = None
        self._owns_runtimes = True  # False when start() was handed a loaded runtime (tests)
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.base is not None and self.dead is None

    async def start(self, runtime: Runtime | None = None) -> None:
        """Load the base model (or take a loaded runtime), then the active students."""
        if runtime is not None:
            self._owns_runtimes = False
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
                pass  # registry unreadable for now: serve the base model; the poller retries

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):
            task.cancel()
        for runtime in self._runtimes():
            await runtime.close()

    def _runtimes(self) -> list[Runtime]:
        models = [*self.students.values(), *([self.base] if self.base else [])]
        return list({id(m.runtime): m.runtime for m in models}.values())

    # ---- engine health ----------------------------------------------------------------------

    def check_health(self) -> str | None:
        """Ask each runtime whether its engine is alive; act on a death. Returns why the engine
        is dead, or None. On the event loop."""
        if self.dead is None and not self._closing:
            for runtime in self._runtimes():
                reason = engine_dead_reason(runtime)
                if reason is not None:
                    self.engine_died(reason)
                    break
        return self.dead

    def engine_died(self, reason: str) -> None:
        """Readiness 503 from now on, then exit or restart (on_engine_death). Only the first
        report acts. On the event loop."""
        if self.dead is not None or self._closing:
            return
        self.dead = reason
        settings = self.settings
        restart = settings.on_engine_death == "restart"
        if restart and self._owns_runtimes and self.engine_restarts < settings.engine_max_restarts:
            self.death_action = "loading the models afresh"
        elif self.exit_process is not None:
            self.death_action = "exiting"
        else:
            self.death_action = "staying up, not ready (embedded: no process to end)"
        self.metrics.engine_deaths.inc()
        if self.death_action == "loading the models afresh":
            log.error("the student engine died: %s; loading the models afresh (restart %d of at most %d)",
                      reason, self.engine_restarts + 1, settings.engine_max_restarts)
            self._spawn(self._restart())
            return
        if restart and not self._owns_runtimes:
            why = "its runtime was handed in, not built here, so it cannot be rebuilt"
        elif restart:
            why = f"it was restarted {self.engine_restarts} times already (engine_max_restarts)"
        else:
            why = "DSC_ON_ENGINE_DEATH=exit"
        log.error("the student engine died: %s; %s: %s", reason, why, self.death_action)
        self._exit(ENGINE_DEAD_EXIT_CODE)

    def _exit(self, code: int) -> None:
        """End the process with `code` (an orchestrator restarts it); embedded, stay up not ready."""
        if self.exit_process is not None:
            self.exit_process(code)

    async def _restart(self) -> None:
        reason = self.dead
        async with self._reload_lock:  # no registry reload meanwhile
            runtimes = self._runtimes()
            self.base, self.table, self.students = None, {}, {}
            self.failed.clear()
            self.load_error = f"the engine died ({reason}); loading the models afresh"
            for runtime in runtimes:
                try:
                    await runtime.close()
                except Exception:
                    log.exception("closing a dead runtime failed")
        self.load_error = None
        await self.start()
        if self.base is None or self._closing:  # start() recorded why in load_error
            log.error("the student could not load its models again after the engine died (%s)", self.load_error)
            self.death_action = f"the models could not be loaded again ({self.load_error}); " + (
                "exiting" if self.exit_process else "staying up, not ready")
            self._exit(ENGINE_DEAD_EXIT_CODE)
            return
        self.engine_restarts += 1
        self.dead = None
        log.warning("student models loaded afresh after the engine died (%s)", reason)

    async def watch_engine(self, interval: float = ENGINE_WATCH_SECONDS) -> None:
        """Notice a dead engine also while no request runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_health()
            except Exception:
                log.exception("engine health check failed")

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
            (log.debug if message == self._registry_problem else log.warning)("cannot read the student registry: %s", message)
            self._registry_problem = message
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
            served: dict[str, ServedModel] = {}
            loaded, errors = [], {}
            for student_id, row in wanted.items():
                if student_id in self.students:
                    served[student_id] = self.students[student_id]
                    continue
                earlier = self.failed.get(student_id)
                if earlier is not None and time.monotonic() < earlier.retry_at:
                    errors[student_id] = earlier.message
                    continue
                try:
                    served[student_id] = await self._load_student(row)
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
            return {"loaded": loaded, "retired": [m.id for m in retired], "errors": errors, "models": sorted(self.table)}

    async def _load_student(self, row: Student) -> ServedModel:
        assert self.base is not None
        base_runtime = self.base.runtime
        store = self.settings.resolved_model_store
        base_path = await asyncio.to_thread(resolve_model, row.base_model, store)
        public = f"{row.name}-v{row.version}"
        promoted = row.promoted_at.timestamp() if row.promoted_at else time.time()
        common = dict(kind="student", task=row.task_name, student_id=row.id, version=row.version, promoted_at=promoted)
        if row.adapter_path and Path(base_path).resolve() == Path(base_runtime.base_path).resolve():
            adapter_dir = Path(row.adapter_path)
            await asyncio.to_thread(validate_adapter, adapter_dir, base_path, max_rank=self.settings.student_max_lora_rank)
            engine_name = f"{public}-{uuid.uuid4().hex[:8]}"  # never reuse an adapter name (DESIGN §4)
            await base_runtime.load_adapter(engine_name, adapter_dir)
            return ServedModel(id=public, runtime=base_runtime, adapter=engine_name, **common)
        if row.merged_path:
            merged = await asyncio.to_thread(resolve_model, row.merged_path, store)
            runtime = await asyncio.to_thread(self.runtime_factory, merged)
            return ServedModel(id=public, runtime=runtime, owns_runtime=True, **common)
        if row.adapter_path:
            raise InvalidRequest(
                f"student {public} adapts {row.base_model}, but this service runs {self.base.id}; "
                "register a merged model or serve that base model"
            )
        raise InvalidRequest(f"student {public} has neither an adapter nor a merged model")

    def _publish(self, students: dict[str, ServedModel]) -> None:
        assert self.base is not None
        table: dict[str, ServedModel] = {self.base.id: self.base, "base": self.base}
        newest = max(students.values(), key=lambda m: m.promoted_at, default=None)
        for model in sorted(students.values(), key=lambda m: m.promoted_at):
            for name in (model.task, model.student_id):
                if name and name not in table:
                    table[name] = model
            table[model.id] = model
        table["student"] = table["default"] = newest or self.base
        self.table, self.students = table, students  # one assignment: requests see old or new, never half
        self.metrics.active_model.clear()
        for model in {id(m): m for m in table.values()}.values():
            self.metrics.active_model.labels(model.id, model.kind).set(1)

    def _retire(self, model: ServedModel) -> None:
        model.retired = True
        if model.inflight == 0:
            self._spawn(self._unload(model))

    async def _unload(self, model: ServedModel) -> None:
        try:
            if model.owns_runtime:
                await model.runtime.close()
            elif model.adapter:
                await model.runtime.unload_adapter(model.adapter)
            log.info("unloaded %s", model.id)
        except Exception:
            log.exception("unloading %s failed", model.id)

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def poll_registry(self) -> None:
        """Pick up promotions made through the teacher without a manual reload."""
        while True:
            await asyncio.sleep(self.settings.student_poll_seconds)
            try:
                await self.reload()
            except NotReady:
                pass
            except Exception:
                log.exception("registry poll failed")

    # ---- models -----------------------------------------------------------------------------

    def model_cards(self) -> list[ModelCard]:
        if self.base is None:
            return []
        aliases: dict[int, list[str]] = {}
        for name, model in self.table.items():
            if name != model.id:
                aliases.setdefault(id(model), []).append(name)
        cards = []
        for model in {id(m): m for m in self.table.values()}.values():
            note = None
            if model.kind == "base" and self.table["student"] is model and not self.standalone:
                note = "no student promoted yet: serving the base student model"
            cards.append(ModelCard(
                id=model.id, created=model.created, dsc_kind=model.kind, task=model.task, student_id=model.student_id,
                version=model.version, aliases=sorted(aliases.get(id(model), [])), note=note,
            ))
        return cards

    def resolve(self, name: str) -> ServedModel:
        if self.check_health() is not None:
            raise EngineDead(self.dead)
        if self.base is None:
            # The load error itself can name files and URLs: it is in the log and, for admins, at /readyz.
            raise NotReady("the student model failed to load; see the student's log" if self.load_error
                           else "the student model is still loading; retry shortly")
        model = self.table.get(name)
        if model is None:
            raise ModelNotFound(f"The model '{name}' does not exist or is not served here; GET /v1/models lists the served models", param="model")
        return model

    def queue_depth(self) -> int:
        runtimes = {id(m.runtime): m.runtime for m in self.table.values()}
        return sum(runtime.queue_depth() for runtime in runtimes.values())

    # ---- completions ------------------------------------------------------------------------

    def render(self, model: ServedModel, request: ChatCompletionRequest) -> list[int]:
        conversation = []
        for message in request.messages:
            try:
                content = message.text()
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="messages") from exc
            role = "system" if message.role == "developer" else message.role
            conversation.append({"role": role, "content": content})
        limit = self.settings.student_max_prompt_tokens
        if sum(len(m["content"]) for m in conversation) > limit * 16:  # refuse giant prompts before tokenising them
            raise ContextLengthExceeded(f"the messages are far longer than the limit of {limit} prompt tokens", param="messages")
        tokenizer = model.runtime.tokenizer
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def admit(self, request: ChatCompletionRequest) -> Completion:
        """Validate, check limits, pin the model and start generation. Raises a DscError (4xx)
        before anything is generated."""
        settings = self.settings
        model = self.resolve(request.model)
        if request.n > settings.student_max_n:
            raise InvalidRequest(f"n is {request.n}; this service allows at most {settings.student_max_n}", param="n")
        requested = request.requested_max_tokens()
        if requested is not None and requested > settings.student_max_tokens:
            raise InvalidRequest(f"max_tokens is {requested}; this service allows at most {settings.student_max_tokens}", param="max_tokens")
        max_tokens = requested or min(DEFAULT_MAX_TOKENS, settings.student_max_tokens)
        prompt_ids = self.render(model, request)
        if len(prompt_ids) > settings.student_max_prompt_tokens:
            self.metrics.rejected.labels("prompt_too_long").inc()
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt_ids)} tokens; this service allows at most {settings.student_max_prompt_tokens}", param="messages"
            )
        context = model.runtime.max_model_len
        if len(prompt_ids) + max_tokens > context:
            raise ContextLengthExceeded(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceed the context of {context} tokens", param="max_tokens"
            )
        if self.pending + request.n > settings.student_max_pending:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"the student is at capacity ({self.pending} sequences in flight); retry shortly", retry_after=1)

        temperature = 1.0 if request.temperature is None else request.temperature
        top_p = 1.0 if request.top_p is None else request.top_p
        stop = tuple(request.stop_list)
        self.pending += request.n
        model.inflight += 1
        streams = []
        try:
            for index in range(request.n):
                params = RowParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=request_seed(request.seed, index), stop=stop)
                streams.append(model.runtime.start(prompt_ids, params, model.adapter))
        except Exception:
            for stream in streams:
                stream.cancel()
            self._release(model, request.n)
            raise
        return Completion(
            id=f"chatcmpl-{uuid.uuid4().hex}", model=model, prompt_tokens=len(prompt_ids), streams=streams,
            started=time.perf_counter(), release=lambda: self._release(model, request.n),
        )

    def _release(self, model: ServedModel, n: int) -> None:
        self.pending -= n
        model.inflight -= 1
        if model.retired and model.inflight == 0:
            self._spawn(self._unload(model))

    def observe(self, completion: Completion, completion_tokens: int, outcome: str) -> None:
        name = completion.model.id
        elapsed = time.perf_counter() - completion.started
        self.metrics.completions.labels(name, outcome).inc()
        self.metrics.latency.labels(name).observe(elapsed)
        self.metrics.prompt_tokens.labels(name).inc(completion.prompt_tokens)
        self.metrics.completion_tokens.labels(name).inc(completion_tokens)
        if completion.first_token_at is not None:
            ttft = completion.first_token_at - completion.started
            self.metrics.ttft.labels(name).observe(ttft)
            decode = elapsed - ttft
            if completion_tokens > 1 and decode > 0:
                self.metrics.tokens_per_second.labels(name).observe(completion_tokens / decode)

    async def respond(self, completion: Completion) -> ChatCompletionResponse:
        """Run a completion to its end and build the OpenAI response."""
        texts = [[] for _ in completion.streams]
        finish: list[str | None] = [None] * len(completion.streams)
        tokens = 0
        outcome = "error"
        try:
            async for index, event in completion.events():
                if isinstance(event, Delta):
                    texts[index].append(event.text)
                else:
                    finish[index] = event.finish_reason
                    tokens += event.completion_tokens
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            completion.close()
            self.observe(completion, tokens, outcome)
        choices = [
            Choice(index=i, message=ResponseMessage(content="".join(parts)), finish_reason=finish[i] or "stop")
            for i, parts in enumerate(texts)
        ]
        usage = Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=tokens, total_tokens=completion.prompt_tokens + tokens)
        return ChatCompletionResponse(id=completion.id, model=completion.model.id, choices=choices, usage=usage)

    async def stream(self, completion: Completion, *, include_usage: bool = False) -> AsyncIterator[ChatCompletionChunk]:
        """The completion as OpenAI chunks: a role chunk per choice, content deltas, a finish
        chunk per choice, then (if asked) a usage chunk. Closing the iterator cancels generation."""
        created = int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=completion.id, created=created, model=completion.model.id, choices=choices, usage=usage)

        tokens = 0
        outcome = "error"
        try:
            for index in range(len(completion.streams)):
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
            async for index, event in completion.events():
                if isinstance(event, Delta):
                    yield chunk([ChunkChoice(index=index, delta=DeltaMessage(content=event.text))])
                else:
                    tokens += event.completion_tokens
                    yield chunk([ChunkChoice(index=index, delta=DeltaMessage(), finish_reason=event.finish_reason)])
            if include_usage:
                total = completion.prompt_tokens + tokens
                yield chunk([], Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=tokens, total_tokens=total))
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            completion.close()
            self.observe(completion, tokens, outcome)
