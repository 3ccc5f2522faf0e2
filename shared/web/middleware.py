"""Request ids (on every log line written for the request), one access log line per request,
request-body limits, the last line of error handling and HTTP metrics, as pure ASGI middleware
(streaming responses pass through untouched).

It sits inside Starlette's ServerErrorMiddleware, so an unexpected exception ends here: logged
once with the request id and answered with the JSON error shape (ServerErrorMiddleware would
log it a second time and re-raise it to the server).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import HeadersTooLarge, PayloadTooLarge
from shared.logs import log_ids
from shared.web.errors import error_response

log = logging.getLogger("dsc.access")
log_errors = logging.getLogger("dsc.errors")


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


# A client's request id is kept when it is 1-64 visible ASCII characters: safe to log and to echo
# in a header. Anything else (a non-UTF-8 byte, a control character) gets a generated id instead.
CLIENT_REQUEST_ID = re.compile(rb"[!-~]{1,64}")


def request_id_of(headers: dict[bytes, bytes]) -> str:
    given = headers.get(b"x-request-id", b"")
    return given.decode("ascii") if CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class RequestContextMiddleware:
    """Adds X-Request-ID, enforces header and body size limits, logs one line per request, counts metrics."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int, max_header_count: int,
                 max_header_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_header_count, self.max_header_bytes = max_header_count, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = request_id_of(headers)
        with log_ids(request_id=request_id):  # every line logged for the request, the access line included
            await self._serve(scope, receive, send, headers, request_id)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], request_id: str) -> None:
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        if (refusal := self._headers_refusal(scope.get("headers") or [])) is not None:
            await self._send_error(scope, receive, send, request_id, 431, HeadersTooLarge.error_type, refusal)
            self._observe(scope, 431, started)
            return

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._send_error(scope, receive, send, request_id, 413, PayloadTooLarge.error_type, self._too_large_message())
            self._observe(scope, 413, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException: FastAPI re-raises it from body parsing (any other
                    # exception there becomes a 400), and the app's handler answers 413.
                    raise BodyTooLarge(self._too_large_message())
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge as error:  # raised where no handler runs (e.g. a streamed body read)
            status["code"] = 413
            if not status["sent"]:
                await self._send_error(scope, receive, send, request_id, 413, PayloadTooLarge.error_type, error.detail)
        except ClientDisconnect:  # the client left mid-request: nobody to answer, nothing broken
            status["code"] = 499
        except Exception:
            log_errors.exception("unhandled error on %s %s (request id %s)", scope["method"], scope["path"], request_id)
            if not status["sent"]:
                await self._send_error(scope, receive, send, request_id, 500, "internal_error",
                                       "internal error; see the service log (request id in X-Request-ID)")
        finally:
            self._observe(scope, status["code"], started)

    def _headers_refusal(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why the request's headers are refused, or None: the server has parsed them already, but
        nothing past this point (auth, routing, logging) sees a header section this large."""
        if len(headers) > self.max_header_count:
            return f"{len(headers)} header fields exceed the limit of {self.max_header_count} (max_header_count)"
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return f"{size} bytes of header fields exceed the limit of {self.max_header_bytes} (max_header_bytes)"
        return None

    def _too_large_message(self) -> str:
        return f"request body exceeds the limit of {self.max_body_bytes} bytes (max_body_bytes)"

    async def _send_error(self, scope: Scope, receive: Receive, send: Send, request_id: str, code: int, error_type: str, message: str) -> None:
        await error_response(code, error_type, message, headers={"X-Request-ID": request_id})(scope, receive, send)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = _route_template(scope)
        self.metrics.requests.labels(self.metrics.service, scope["method"], route, str(status)).inc()
        self.metrics.latency.labels(self.metrics.service, scope["method"], route).observe(elapsed)
        # Never log headers: they carry bearer tokens.
        ms = round(elapsed * 1000, 1)
        log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms,
                 extra={"fields": {"method": scope["method"], "path": scope["path"], "status": status, "ms": ms}})


class BodyTooLarge(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(413, message)
