"""OpenAI-compatible HTTP engine: a remote vLLM cluster or hosted model as the teacher.

Requests of a batch are sent concurrently (at most `concurrency` at once, across all callers),
so a remote server with continuous batching sees the whole batch at once. One async HTTP client
on a private event loop (shared.engines.loop) serves every calling thread; `close()` cancels the
requests in flight (and their waits between retries), so it never waits out a slow server.

Transient failures are retried per request (tenacity): 408, 409, 429 and 5xx answers, a dropped
or refused connection, a request that ran past `timeout`. The wait before a retry is the
server's `Retry-After` (or `retry-after-ms`) when it sends one, else exponential backoff with
jitter, never more than `max_wait`; a request is tried at most `max_retries` + 1 times. Other
answers (400, 401, 404, ...) fail at once: no retry can fix them. A request that still fails
raises EngineError, which the teacher's job worker counts as one failure of the batch.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from concurrent.futures import Future
from typing import Sequence

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from shared.engines.base import Conversation, Generation, SamplingParams, request_seed
from shared.engines.loop import EngineLoop, gather_or_cancel
from shared.errors import EngineError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


class TransientError(Exception):
    """One try failed in a way a later try may not (the server asked to wait, or was down)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait per `retry-after-ms` (OpenAI's) or `Retry-After` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "EMPTY",
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_wait: float = 30.0,
        initial_wait: float = 0.5,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.max_wait = max(0, max_retries), max_wait
        self._backoff = wait_exponential_jitter(initial=initial_wait, max=max_wait, jitter=initial_wait)
        self._loop = EngineLoop("openai-engine-loop")
        self._client, self._slots = self._loop.run(self._start(api_key, concurrency, timeout))

    async def _start(self, api_key: str, concurrency: int, timeout: float) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # Created on the loop that uses them. The semaphore, not the pool, bounds concurrency:
        # a request waiting for a free slot must not run into the pool's connect timeout.
        client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        return client, asyncio.Semaphore(max(1, concurrency))

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        if not conversations:
            return []
        requests = [self._body(conversation, params, request_seed(params.seed, index)) for index, conversation in enumerate(conversations)]
        return self._loop.run(gather_or_cancel(self._one(body) for body in requests))

    def submit(self, conversation: Conversation, params: SamplingParams) -> "Future[Generation]":
        """One request, its seed as given (shared.engines.base.ContinuousEngine)."""
        return self._loop.submit(self._one(self._body(conversation, params, params.seed)))

    def _body(self, conversation: Conversation, params: SamplingParams, seed: int | None) -> dict:
        body: dict = {
            "model": self.model,
            "messages": list(conversation),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _wait(self, state: RetryCallState) -> float:
        """The server's Retry-After when it sent one, else exponential backoff; at most max_wait."""
        error = state.outcome.exception() if state.outcome is not None else None
        hinted = getattr(error, "retry_after", None)
        return min(hinted, self.max_wait) if hinted is not None else self._backoff(state)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("remote engine: try %d failed (%s); retrying in %.1f s", state.attempt_number, error, wait)

    async def _one(self, body: dict) -> Generation:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait, before_sleep=self._log_retry, reraise=True,
            ):
                with attempt:
                    return await self._try(body)
        except TransientError as exc:
            tries = self.max_retries + 1
            raise EngineError(f"remote engine {self.base_url} failed {tries} time{'s' if tries > 1 else ''}; the last: {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _try(self, body: dict) -> Generation:
        """One request. TransientError for what a retry may fix, EngineError for the rest."""
        try:
            async with self._slots:  # held for the request only, not while waiting to retry
                response = await self._client.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(f"{type(exc).__name__}: no answer within the timeout ({self._client.timeout.read} s)") from exc
        except httpx.TransportError as exc:  # refused, reset
            raise TransientError(f"{type(exc).__name__}: {str(exc) or 'no detail'}") from exc
        if response.status_code in RETRY_STATUS or response.status_code >= 500:
            raise TransientError(f"HTTP {response.status_code}: {response.text[:200]}", parse_retry_after(response.headers))
        try:
            response.raise_for_status()
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Generation(
                text=(choice["message"]["content"] or "").strip(),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop",
            )
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"remote engine {self.base_url} failed: {exc}") from exc

    def close(self) -> None:
        self._loop.close(finalize=self._client.aclose)
