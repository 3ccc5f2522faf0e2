"""The OpenAI-compatible HTTP engine (a remote teacher) retries transient failures with backoff
that honours Retry-After, with its request timeout a setting, and fails at once on answers no
retry can fix.

The remote model is our own student service serving the real SmolLM2 (a real OpenAI-compatible
server). In front of it runs `FlakyGateway`, a TEST DOUBLE for a hosted model's gateway: a real
HTTP server (uvicorn) that answers the first requests with the failures a test scripts (429 with
Retry-After, 503, 502, 500, a reply slower than the client's timeout) and forwards the rest
to the real server unchanged. It records when each request came, so the waits are measured."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from live_server import live_server
from shared.engines import create_engine
from shared.engines.base import SamplingParams
from shared.engines.openai_engine import OpenAIEngine
from shared.errors import EngineError
from shared.settings import Settings

PARAMS = SamplingParams(temperature=0.0, max_tokens=4)
ONE = [[{"role": "user", "content": "Name a colour."}]]


@dataclass
class Failure:
    status: int | None = 503  # None: no failure status, just `delay` and then forward
    retry_after: str | None = None
    delay: float = 0.0


class FlakyGateway:
    """Test double for a hosted model's gateway (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.script: list[Failure] = []
        self.always: Failure | None = None  # fail every request like this (after the script)
        self.seen: list[float] = []  # time.monotonic() of each chat request
        self.app = FastAPI()
        self.app.add_api_route("/readyz", lambda: {"ready": True})
        self.app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])

    def fail(self, *failures: Failure, always: Failure | None = None) -> None:
        self.script, self.always, self.seen = list(failures), always, []

    async def chat(self, request: Request) -> Response:
        self.seen.append(time.monotonic())
        body = await request.body()
        failure = self.script.pop(0) if self.script else self.always
        if failure is not None:
            await asyncio.sleep(failure.delay)
            if failure.status is not None:
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
                error = {"error": {"message": "scripted failure", "type": "server_error", "param": None, "code": None}}
                return JSONResponse(error, status_code=failure.status, headers=headers)
        async with httpx.AsyncClient(timeout=120) as client:
            upstream = await client.post(f"{self.upstream}/v1/chat/completions", content=body,
                                         headers={"Authorization": request.headers.get("authorization", ""), "Content-Type": "application/json"})
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.seen, self.seen[1:])]


@pytest.fixture(scope="module")
def gateway(registry_server) -> Iterator[tuple[str, FlakyGateway]]:
    url, _app = registry_server
    flaky = FlakyGateway(url)
    with live_server(flaky.app, name="flaky-gateway") as gateway_url:
        yield gateway_url, flaky


def engine_for(gateway_url: str, keys: dict, **options) -> OpenAIEngine:
    return OpenAIEngine(f"{gateway_url}/v1", "base", api_key=keys["client"], **options)


def test_retry_after_is_honoured_then_the_answer_comes_through(gateway, keys):
    url, flaky = gateway
    flaky.fail(Failure(429, retry_after="1"), Failure(503, retry_after="1"))
    engine = engine_for(url, keys, max_retries=3, max_wait=5, initial_wait=0.05)
    try:
        [answer] = engine.generate(ONE, PARAMS)
    finally:
        engine.close()
    assert answer.text and answer.completion_tokens > 0
    assert len(flaky.seen) == 3  # two refusals, then the real answer
    # Waited what the server asked each time (backoff alone would have waited ~0.05-0.2 s).
    assert all(0.95 <= gap < 3 for gap in flaky.gaps()), flaky.gaps()


def test_without_retry_after_the_waits_back_off_exponentially(gateway, keys):
    url, flaky = gateway
    flaky.fail(Failure(503), Failure(502), Failure(500))
    engine = engine_for(url, keys, max_retries=3, max_wait=5, initial_wait=0.2)
    try:
        [answer] = engine.generate(ONE, PARAMS)
    finally:
        engine.close()
    assert answer.text and len(flaky.seen) == 4
    gaps = flaky.gaps()
    # initial · 2^(n-1) plus up to `initial` of jitter: 0.2-0.4, 0.4-0.6, 0.8-1.0 s (+ request time).
    for gap, least in zip(gaps, (0.2, 0.4, 0.8)):
        assert least <= gap < least + 1.0, gaps


def test_a_request_that_keeps_failing_is_an_engine_error_after_max_retries(gateway, keys):
    url, flaky = gateway
    flaky.fail(always=Failure(503, retry_after="0"))
    engine = engine_for(url, keys, max_retries=2, max_wait=5)
    try:
        with pytest.raises(EngineError, match=r"failed 3 times.*HTTP 503"):
            engine.generate(ONE, PARAMS)
    finally:
        engine.close()
    assert len(flaky.seen) == 3


def test_answers_no_retry_can_fix_fail_at_once(gateway, keys):
    url, flaky = gateway
    flaky.fail()  # forwards everything: the real server answers 401 to a wrong key
    engine = OpenAIEngine(f"{url}/v1", "base", api_key="wrong-key", max_retries=3, initial_wait=0.05)
    try:
        with pytest.raises(EngineError, match="401"):
            engine.generate(ONE, PARAMS)
    finally:
        engine.close()
    assert len(flaky.seen) == 1


def test_the_timeout_is_a_setting_and_a_timed_out_request_is_tried_again(gateway, keys, tmp_path):
    url, flaky = gateway
    flaky.fail()
    warm = engine_for(url, keys, max_retries=0)
    try:
        started = time.monotonic()
        warm.generate(ONE, PARAMS)  # how long a real answer takes on this (busy) machine
        answer_s = time.monotonic() - started
    finally:
        warm.close()
    timeout = max(3.0, 4 * answer_s)
    flaky.fail(Failure(None, delay=timeout + 5))  # the first reply would come too late; the next is forwarded at once
    settings = Settings(data_dir=tmp_path, engine="openai", openai={
        "base_url": f"{url}/v1", "api_key": keys["client"], "timeout": timeout, "max_retries": 2, "retry_max_wait": 1.0})
    engine = create_engine(settings, "base")
    try:
        [answer] = engine.generate(ONE, PARAMS)
    finally:
        engine.close()
    assert answer.text and len(flaky.seen) == 2
    # Gave up on the slow reply after openai.timeout (plus at most 1 s of backoff), before it came.
    assert timeout <= flaky.gaps()[0] < timeout + 1.0 + 2.0, (flaky.gaps(), timeout, answer_s)
