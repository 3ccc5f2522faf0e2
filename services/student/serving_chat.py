"""Chat completions, with no HTTP in them: validate a request and check the limits, pin its model
and start one event stream per choice, then turn the events into an OpenAI response or chunks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

from services.student.engine_health import EngineHealth
from services.student.metrics import StudentMetrics
from services.student.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    FunctionCall,
    ResponseMessage,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    UNSUPPORTED_FIELDS,
    Usage,
)
from services.student.routing import ServedModel
from services.student.runtimes.base import (
    LOGIT_BIAS, LOGPROBS, PENALTIES, STRUCTURED_OUTPUT, Delta, Failed, Finished, RowParams, RowStream, TokenChoice,
)
from services.student.serving_models import ServedModels
from shared.engines.base import EngineDead, request_seed
from shared.errors import EngineError, InvalidRequest, Overloaded
from shared.settings import Settings

log = logging.getLogger(__name__)


class ContextLengthExceeded(InvalidRequest):
    """400 with OpenAI's code for a prompt that is too long."""

    code = "context_length_exceeded"


@dataclass(frozen=True)
class ForcedTool:
    """A tool call the request forces (tool_choice "required" or a named function): the output is
    constrained to JSON that is one valid call, then answered as `tool_calls`."""

    name: str | None  # the named function; None: any of the tools, the output says which ({"name", "arguments"})

    def call(self, text: str) -> ToolCall | None:
        """The call in the generated JSON, or None where it is not one (cut short by max_tokens)."""
        if self.name is not None:
            return ToolCall(function=FunctionCall(name=self.name, arguments=text))
        try:
            value = json.loads(text)
            return ToolCall(function=FunctionCall(name=value["name"], arguments=json.dumps(value["arguments"])))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class Completion:
    """An admitted chat completion: the model it is pinned to and one event stream per choice."""

    id: str
    model: ServedModel
    prompt_tokens: int
    streams: list[RowStream]
    started: float
    release: Callable[[], None]
    params: RowParams  # of every choice, less its seed
    tools: ForcedTool | None = None  # the tool call the output is, where one is forced
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


LOGGED_NAMES, LOGGED_NAME_CHARS = 20, 64  # a client's field names are its text: bounded in the log


def loggable_names(names: list[str]) -> str:
    """Client-chosen field names as one bounded log value: at most LOGGED_NAMES, each cut to
    LOGGED_NAME_CHARS, and how many were left out."""
    shown = [repr(name if len(name) <= LOGGED_NAME_CHARS else name[:LOGGED_NAME_CHARS] + "…") for name in names[:LOGGED_NAMES]]
    more = f" (+{len(names) - LOGGED_NAMES} more)" if len(names) > LOGGED_NAMES else ""
    return "[" + ", ".join(shown) + "]" + more


def _object_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    return parameters or {"type": "object", "properties": {}}


def sampling_plan(request: ChatCompletionRequest, supports: frozenset[str], kind: str, vocab_size: int) -> tuple[RowParams, ForcedTool | None]:
    """The request's sampling fields as RowParams (without max_tokens and seed) and the tool call it
    forces. Refuses with a 400 naming the field whatever this runtime cannot honour: nothing is
    silently ignored."""

    def refuse(param: str, why: str | None = None) -> InvalidRequest:
        return InvalidRequest(why or f"{param} is not supported by the student's {kind} runtime", param=param)

    def need(feature: str, param: str) -> None:
        if feature not in supports:
            raise refuse(param)

    for name in UNSUPPORTED_FIELDS:
        if name in (request.model_extra or {}):
            raise refuse(name, f"{name} is not supported by the student")
    ignored = sorted(set(request.model_extra or {}) - set(UNSUPPORTED_FIELDS))
    if ignored:
        log.warning("The following fields were present in the request but ignored: %s", loggable_names(ignored))
    if request.modalities and request.modalities != ["text"]:
        raise refuse("modalities", "the student answers in text only: modalities must be [\"text\"]")
    if request.stream_options is not None and not request.stream:
        raise refuse("stream_options", "stream_options is only allowed when stream is true")

    params: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value:
            need(PENALTIES, name)
            params[name] = value
    if request.logit_bias:
        need(LOGIT_BIAS, "logit_bias")
        bias = {}
        for key, value in request.logit_bias.items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
                raise refuse("logit_bias", f"logit_bias keys are token ids from 0 to {vocab_size - 1}; {key!r} is not one")
            bias[int(key)] = value
        params["logit_bias"] = bias
    if request.top_logprobs is not None and not request.logprobs:
        raise refuse("top_logprobs", "top_logprobs needs logprobs set to true")
    if request.logprobs:
        need(LOGPROBS, "logprobs")
        params["logprobs"] = request.top_logprobs or 0

    forced = None
    choice = request.tool_choice
    if choice is not None and not request.tools:
        raise refuse("tool_choice", "tool_choice needs tools")
    if request.tools and choice != "none":
        if choice is None or choice == "auto":
            raise refuse("tool_choice", 'tool_choice "auto" needs a tool-call parser for this model, which the student '
                                        'lacks; send tool_choice "required", a named function, or "none"')
        need(STRUCTURED_OUTPUT, "tools")
        tools = {tool.function.name: tool.function for tool in request.tools}
        if choice == "required":
            forced = ForcedTool(None)
            params["json_schema"] = {"anyOf": [
                {"type": "object", "properties": {"name": {"const": name}, "arguments": _object_schema(function.parameters)},
                 "required": ["name", "arguments"], "additionalProperties": False}
                for name, function in tools.items()
            ]}
        else:
            if choice.function.name not in tools:
                raise refuse("tool_choice", f"tool_choice names {choice.function.name!r}, which is not among the tools")
            forced = ForcedTool(choice.function.name)
            params["json_schema"] = _object_schema(tools[choice.function.name].parameters)
    form = request.response_format
    if form is not None and form.type != "text":
        need(STRUCTURED_OUTPUT, "response_format")
        if forced is not None:
            raise refuse("response_format", "response_format cannot be combined with a forced tool call")
        if form.type == "json_object":
            params["json_object"] = True
        elif form.json_schema is None or form.json_schema.schema_ is None:
            raise refuse("response_format", "response_format json_schema needs json_schema.schema")
        else:
            params["json_schema"] = form.json_schema.schema_
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    return RowParams(max_tokens=1, temperature=temperature, top_p=top_p, stop=tuple(request.stop_list), **params), forced


def choice_logprobs(tokens: list[TokenChoice] | tuple[TokenChoice, ...]) -> ChoiceLogprobs:
    """OpenAI's `choice.logprobs`: one entry per token, each with its top alternatives."""

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": max(logprob, -9999.0), "bytes": list(token.encode("utf-8"))}

    return ChoiceLogprobs(content=[
        TokenLogprob(**entry(t.token, t.logprob), top_logprobs=[TopLogprob(**entry(tok, lp)) for tok, lp in t.top]) for t in tokens
    ])


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
        limit = self.settings.student.max_prompt_tokens
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
        runtime = model.runtime
        plan, forced = sampling_plan(request, runtime.supports, runtime.kind, len(runtime.tokenizer))
        if request.n > settings.student.max_n:
            raise InvalidRequest(f"n is {request.n}; this service allows at most {settings.student.max_n}", param="n")
        requested = request.requested_max_tokens()
        if requested is not None and requested > settings.student.max_tokens:
            raise InvalidRequest(f"max_tokens is {requested}; this service allows at most {settings.student.max_tokens}", param="max_tokens")
        max_tokens = requested or min(settings.student.default_max_tokens, settings.student.max_tokens)
        prompt_ids = self.render(model, request)
        if len(prompt_ids) > settings.student.max_prompt_tokens:
            self.metrics.rejected.labels("prompt_too_long").inc()
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt_ids)} tokens; this service allows at most {settings.student.max_prompt_tokens}", param="messages"
            )
        context = model.runtime.max_model_len
        if len(prompt_ids) + max_tokens > context:
            raise ContextLengthExceeded(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceed the context of {context} tokens", param="max_tokens"
            )
        if self.pending + request.n > settings.student.max_pending:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"the student is at capacity ({self.pending} sequences in flight); retry shortly",
                             retry_after=settings.student.pending_retry_after_seconds)

        self.pending += request.n
        self.models.pin(model)
        streams = []
        try:
            for index in range(request.n):
                params = replace(plan, max_tokens=max_tokens, seed=request_seed(request.seed, index))
                streams.append(model.runtime.start(prompt_ids, params, model.adapter))
        except Exception:
            for stream in streams:
                stream.cancel()
            self._release(model, request.n)
            raise
        return Completion(
            id=f"chatcmpl-{uuid.uuid4().hex}", model=model, prompt_tokens=len(prompt_ids), streams=streams,
            started=time.perf_counter(), release=lambda: self._release(model, request.n), params=plan, tools=forced,
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
        logprobs: list[list[TokenChoice]] = [[] for _ in completion.streams]
        finish: list[str | None] = [None] * len(completion.streams)
        tokens = 0
        outcome = "error"
        try:
            async for index, event in completion.events():
                if isinstance(event, Delta):
                    texts[index].append(event.text)
                    logprobs[index].extend(event.logprobs)
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
        asked_logprobs = completion.params.logprobs is not None
        choices = []
        for i, parts in enumerate(texts):
            message, reason = self._message("".join(parts), finish[i] or "stop", completion.tools)
            choices.append(Choice(index=i, message=message, finish_reason=reason,
                                  logprobs=choice_logprobs(logprobs[i]) if asked_logprobs else None))
        usage = Usage(prompt_tokens=completion.prompt_tokens, completion_tokens=tokens, total_tokens=completion.prompt_tokens + tokens)
        return ChatCompletionResponse(id=completion.id, model=completion.model.id, choices=choices, usage=usage)

    @staticmethod
    def _message(text: str, reason: str, tools: ForcedTool | None) -> tuple[ResponseMessage, str]:
        """The assistant message of a finished choice: its text, or the tool call it forced."""
        call = tools.call(text) if tools is not None and reason == "stop" else None
        if call is None:
            return ResponseMessage(content=text), reason
        return ResponseMessage(content=None, tool_calls=[call]), "tool_calls"

    async def stream(self, completion: Completion, *, include_usage: bool = False) -> AsyncIterator[ChatCompletionChunk]:
        """The completion as OpenAI chunks: a role chunk per choice, content deltas (with their
        logprobs), a finish chunk per choice, then (if asked) a usage chunk. A forced tool call is
        sent whole once its JSON is complete. Closing the iterator cancels generation."""
        created = int(time.time())
        asked_logprobs = completion.params.logprobs is not None

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=completion.id, created=created, model=completion.model.id, choices=choices, usage=usage)

        held = [[] for _ in completion.streams]  # the JSON of a forced tool call, until it is complete
        tokens = 0
        outcome = "error"
        try:
            for index in range(len(completion.streams)):
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
            async for index, event in completion.events():
                if isinstance(event, Delta):
                    if completion.tools is not None:
                        held[index].append(event.text)
                    if completion.tools is None or event.logprobs:
                        content = None if completion.tools is not None else event.text
                        yield chunk([ChunkChoice(index=index, delta=DeltaMessage(content=content),
                                                 logprobs=choice_logprobs(event.logprobs) if asked_logprobs else None)])
                    continue
                tokens += event.completion_tokens
                reason = event.finish_reason
                if completion.tools is not None:
                    message, reason = self._message("".join(held[index]), reason, completion.tools)
                    if message.tool_calls:
                        call = message.tool_calls[0]
                        yield chunk([ChunkChoice(index=index, delta=DeltaMessage(tool_calls=[
                            ToolCallDelta(index=0, id=call.id, type="function", function=call.function)]))])
                    else:
                        yield chunk([ChunkChoice(index=index, delta=DeltaMessage(content=message.content))])
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(), finish_reason=reason)])
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
