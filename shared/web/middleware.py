"""Request ids, access logs, request-body limits and HTTP metrics, as pure ASGI middleware
(streaming responses pass through untouched)."""

from __future__ import annotations

import json
import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dsc.access")


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.requests = Counter("dsc_http_requests", "HTTP requests", ["service", "method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "dsc_http_request_seconds", "HTTP request latency", ["service", "method", "route"], registry=registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.service = service


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Adds X-Request-ID, enforces a body size limit, logs one line per request, counts metrics."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send, request_id)
            status["code"] = 413
            self._observe(scope, status["code"], started, request_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            status["code"] = 413
            await self._too_large(send, request_id)
        finally:
            self._observe(scope, status["code"], started, request_id)

    async def _too_large(self, send: Send, request_id: str) -> None:
        body = json.dumps({"error": {"type": "payload_too_large_error", "message": f"request body exceeds the limit of {self.max_body_bytes} bytes (max_body_bytes)"}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = _route_template(scope)
        self.metrics.requests.labels(self.metrics.service, scope["method"], route, str(status)).inc()
        self.metrics.latency.labels(self.metrics.service, scope["method"], route).observe(elapsed)
        # Never log headers: they carry bearer tokens.
        log.info(json.dumps({"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status, "ms": round(elapsed * 1000, 1)}))


class _BodyTooLarge(Exception):
    pass
