"""OpenAI-compatible HTTP engine: a remote vLLM cluster or hosted model as the teacher.

Requests of a batch are sent concurrently (at most `concurrency` at once, across all callers),
so a remote server with continuous batching sees the whole batch at once. One async HTTP client
on a private event loop (shared.engines.loop) serves every calling thread; `close()` cancels the
requests in flight, so it never waits out a slow server's timeout.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import httpx

from shared.engines.base import Conversation, Generation, SamplingParams, request_seed
from shared.engines.loop import EngineLoop, gather_or_cancel
from shared.errors import EngineError


class OpenAIEngine:
    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", concurrency: int = 16, timeout: float = 120.0) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
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
        requests = [self._body(conversation, params, index) for index, conversation in enumerate(conversations)]
        return self._loop.run(gather_or_cancel(self._one(body) for body in requests))

    def _body(self, conversation: Conversation, params: SamplingParams, index: int) -> dict:
        body: dict = {
            "model": self.model,
            "messages": list(conversation),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        seed = request_seed(params.seed, index)
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def _one(self, body: dict) -> Generation:
        try:
            async with self._slots:
                response = await self._client.post("/chat/completions", json=body)
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
