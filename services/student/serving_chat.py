"""Chat completions, with no HTTP in them: validate a request and check the limits, pin its model
and start one event stream per choice, then turn the events into an OpenAI response or chunks."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from services.student.engine_health import EngineHealth
from services.student.metrics import StudentMetrics
from services.student.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
)
from services.student.routing import ServedModel
from services.student.runtimes.base import Delta, Failed, Finished, RowParams, RowStream
from services.student.serving_models import ServedModels
from shared.engines.base import EngineDead, request_seed
from shared.errors import EngineError, InvalidRequest, Overloaded
from shared.settings import Settings

DEFAULT_MAX_TOKENS = 256


class ContextLengthExceeded(InvalidRequest):
    """400 with OpenAI's code for a prompt that is too long."""

    code = "context_length_exceeded"


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


class ChatCompletions:
    """Turns chat requests into event streams on the served models, within the service's limits."""

    def __init__(self, settings: Settings, models: ServedModels, health: EngineHealth, metrics: StudentMetrics) -> None:
        self.settings = settings
        self.models = models
        self.health = health
        self.metrics = metrics
        self.pending = 0  # sequences admitted and unfinished
        self.metrics.pending.set_function(lambda: self.pending)

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
        if self.health.check() is not None:
            raise EngineDead(self.health.dead)
        model = self.models.resolve(request.model)
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
        self.models.pin(model)
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
        self.models.unpin(model)

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
