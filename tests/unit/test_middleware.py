"""The shared middleware as the last line of error handling, on a real FastAPI app over ASGI:
an unexpected exception is logged once and answered in the JSON error shape, a client that
leaves mid-request is no error, and a chunked body over the limit is a 413."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from shared.errors import NotFound
from shared.web.errors import install_error_handlers
from shared.web.middleware import HttpMetrics, RequestContextMiddleware


class Body(BaseModel):
    text: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(CollectorRegistry(), "test"), max_body_bytes=1024, max_header_count=100, max_header_bytes=64 * 1024)

    @app.get("/bug")
    def bug() -> dict:
        raise RuntimeError("a bug in a route")

    @app.post("/echo")
    def echo(body: Body) -> dict:
        return {"length": len(body.text)}

    @app.post("/lookup")
    def lookup(body: Body) -> dict:
        raise NotFound(f"no model {body.text}", param="model")

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        return {"length": len(await request.body())}

    return app


@pytest.fixture()
def app() -> FastAPI:
    return make_app()


async def test_an_unexpected_exception_is_logged_once_and_answered_as_json(app, caplog):
    caplog.set_level(logging.INFO)
    transport = httpx.ASGITransport(app=app)  # raises whatever the app lets escape
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/bug", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal_error", "message": "internal error; see the service log (request id in X-Request-ID)"}}
    assert response.headers["x-request-id"] == "req-123"
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1 and "req-123" in tracebacks[0].getMessage(), [r.getMessage() for r in tracebacks]
    (access,) = [record for record in caplog.records if record.name == "dsc.access"]
    assert access.fields["status"] == 500  # the access log counts it as what it was


async def test_a_chunked_body_over_the_limit_is_413(app):
    async def chunks():
        for _ in range(4):
            yield b"x" * 512

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/echo", "/raw"):
            response = await client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (path, response.text)
            assert response.json()["error"]["type"] == "payload_too_large_error"
            assert "max_body_bytes" in response.json()["error"]["message"]


async def test_a_client_that_leaves_mid_request_is_no_error(app, caplog):
    caplog.set_level(logging.INFO)
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": b"par", "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/raw", "raw_path": b"/raw", "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "server": ("test", 80), "client": ("127.0.0.1", 1234), "root_path": ""}
    await app(scope, receive, send)  # must not raise
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    (access,) = [record for record in caplog.records if record.name == "dsc.access"]
    assert access.fields["status"] == 499


@pytest.mark.parametrize("given", [b"\xff\xfe-not-utf8", b"tab\there", b"x" * 65, b""])
async def test_a_request_id_that_cannot_be_echoed_is_replaced_not_a_500(app, given):
    """A non-UTF-8 byte, a control character or an over-long id gets a generated id; the request is served."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/echo", json={"text": "abc"}, headers=[(b"X-Request-ID", given)])
    assert response.status_code == 200 and response.json() == {"length": 3}
    echoed = response.headers["x-request-id"]
    assert echoed.isascii() and len(echoed) == 32 and echoed.encode() != given


async def test_a_well_formed_request_id_is_kept(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/echo", json={"text": "abc"}, headers={"X-Request-ID": "trace-7/a:b"})
    assert response.headers["x-request-id"] == "trace-7/a:b"


async def test_an_error_that_quotes_a_lone_surrogate_is_still_a_json_4xx(app):
    """JSON may carry a lone surrogate ("\\udc80"); quoting it back in an error must not turn the 404 into a 500."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/lookup", content=b'{"text": "a\\udc80b"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["message"] == "no model a\\udc80b" and response.json()["error"]["param"] == "model"
