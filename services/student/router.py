"""Thin routes of the student: validate, call the serving classes (serving_models, serving_chat,
engine_health), frame the answer."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, AsyncIterator, Awaitable, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.requests import ClientDisconnect
from pydantic import BaseModel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.student.engine_health import EngineHealth
from services.student.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelList
from services.student.serving_chat import ChatCompletions, Completion
from services.student.serving_models import ServedModels
from shared.errors import DscError
from shared.web.auth import AdminScope, ClientScope, is_admin_request
from shared.web.errors import error_responses
from shared.web.routing import OpenAIRoute

log = logging.getLogger(__name__)
router = APIRouter(route_class=OpenAIRoute)
T = TypeVar("T")


def get_models(request: Request) -> ServedModels:
    return request.app.state.models


def get_health(request: Request) -> EngineHealth:
    return request.app.state.health


def get_chat(request: Request) -> ChatCompletions:
    return request.app.state.chat


Models = Annotated[ServedModels, Depends(get_models)]
Health = Annotated[EngineHealth, Depends(get_health)]
Chat = Annotated[ChatCompletions, Depends(get_chat)]


@router.get("/healthz", tags=["health"])
def healthz() -> dict:
    return {"status": "ok"}


class Readiness(BaseModel):
    ready: bool
    model: str | None
    serving: dict[str, str] | None = None
    not_loaded: list[str] | None = None
    reason: str | None = None
    error: str | None = None


@router.get("/readyz", tags=["health"], response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready; retry after Retry-After seconds"}})
async def readyz(models: Models, health: Health, request: Request) -> JSONResponse:
    """200 once the model is loaded and the registry read; 503 with Retry-After until then, and
    again once the engine has died, until the models are loaded afresh. `reason` says why:
    model_loading, model_failed, registry_unread (the base model is loaded, the active students not
    yet looked up: a restarted service must not answer as `student` from the base model), or
    engine_dead. The error itself (it can name files and URLs) is in the log, and in `error` only
    for a caller presenting the admin token. `not_loaded` lists active students whose load failed
    (retried with backoff)."""
    dead = health.check()  # on the event loop, where a death is acted on
    body: dict = {"ready": health.ready, "model": models.base.id if models.base else None}
    if health.ready:
        body["serving"] = {name: model.id for name, model in models.table.items() if name in ("student", "default")}
        if models.failed:  # active students that could not be loaded (retried with backoff)
            body["not_loaded"] = sorted(models.failed)
        return JSONResponse(body)
    if dead is not None:
        body["reason"], detail = "engine_dead", f"the engine died: {dead}; {health.death_action}"
    elif models.load_error:
        body["reason"], detail = "model_failed", models.load_error
    elif models.base is not None:
        body["reason"], detail = "registry_unread", models.registry_problem
    else:
        body["reason"], detail = "model_loading", None
    if detail is not None and is_admin_request(request):
        body["error"] = detail
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus' text exposition format."""
    return PlainTextResponse(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", tags=["openai"], responses=error_responses(503))
def list_models(models: Models, _scope: ClientScope) -> ModelList:
    return ModelList(data=models.model_cards())


@router.post("/v1/chat/completions", tags=["openai"], response_model=ChatCompletionResponse,
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}} | error_responses(404, 502, 503))
async def chat_completions(body: ChatCompletionRequest, request: Request, chat: Chat, _scope: ClientScope) -> Response:
    completion = chat.admit(body)  # every 4xx happens here, before a byte is generated
    headers = {"X-DSC-Model": completion.model.id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # Starlette cancels this generator when the client disconnects; that cancels generation.
        return _CompletionStream(completion, _sse(chat.stream(completion, include_usage=include_usage)), media_type="text/event-stream", headers=headers)
    try:
        response = await _unless_disconnected(chat.respond(completion), request)
    finally:
        completion.close()
    return JSONResponse(response.model_dump(), headers=headers)


@router.post("/admin/reload", tags=["admin"], responses=error_responses(502, 503))
async def reload(models: Models, _scope: AdminScope) -> dict:
    """Load the newly active students now (the service also polls the registry)."""
    return await models.reload(retry_failed=True)


class _CompletionStream(StreamingResponse):
    """Releases its completion's queue slot however the response ends, including a client gone
    before the first byte (the body generator then never starts, so its own cleanup never runs)."""

    def __init__(self, completion: Completion, content: AsyncIterator[str], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.completion = completion

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.completion.close()


async def _sse(chunks: AsyncIterator) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_none=False)}\n\n"
    except DscError as error:  # after the 200 went out, an error can only be an event
        yield _error_event(error.message, error.error_type)
    except Exception:  # a bug: still a well-formed stream, never one cut off without [DONE]
        log.exception("streaming a chat completion failed")
        yield _error_event("internal error while streaming the completion", "internal_error")
    yield "data: [DONE]\n\n"


def _error_event(message: str, error_type: str) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': error_type, 'param': None, 'code': None}})}\n\n"


async def _unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """Await `work`, cancelling it if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        raise ClientDisconnect()  # the middleware counts it as 499: the client left, nothing failed
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
