"""Structured (JSON) logs with the request id of the request that caused them.

The request id lives in a context variable set by a small ASGI middleware; Starlette copies the
context into the threadpool that runs sync endpoints, so a log line written deep in the sampler
still carries it. Job workers set their own context (job id) instead.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

from starlette.types import ASGIApp, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("dsc_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("dsc_job_id", default=None)


class RequestIdMiddleware:
    """Copies the request id (set by the shared RequestContextMiddleware, which runs outside this
    one) into `request_id_var` for the duration of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = (scope.get("state") or {}).get("request_id") if scope["type"] == "http" else None
        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A message that is itself a JSON object (the access log) is merged
    in rather than nested as a string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        merged = None
        if message.startswith("{"):
            try:
                merged = json.loads(message)
            except ValueError:
                merged = None
        if isinstance(merged, dict):
            entry.update(merged)
        else:
            entry["message"] = message
        request_id, job_id = request_id_var.get(), job_id_var.get()
        if request_id and "request_id" not in entry:
            entry["request_id"] = request_id
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: str = "INFO") -> None:
    """Route every logger (uvicorn's included) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's own access log would duplicate ours (dsc.access) and has no request id.
    logging.getLogger("uvicorn.access").disabled = True
    for chatty in ("alembic", "httpx", "urllib3"):  # migration plugin lists at every start
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
