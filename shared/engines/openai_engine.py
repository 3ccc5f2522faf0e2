"""OpenAI-compatible HTTP engine: a remote vLLM cluster or hosted model as the teacher.

Requests of a batch are sent concurrently (bounded), so a remote server with continuous
batching sees the whole batch at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from shared.engines.base import Conversation, Generation, SamplingParams, request_seed
from shared.errors import EngineError


class OpenAIEngine:
    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", concurrency: int = 16, timeout: float = 120.0) -> None:
        self.model = model
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-engine")

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        jobs = [self._pool.submit(self._one, conversation, params, index) for index, conversation in enumerate(conversations)]
        return [job.result() for job in jobs]

    def _one(self, conversation: Conversation, params: SamplingParams, index: int) -> Generation:
        body: dict = {
            "model": self.model,
            "messages": conversation,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        seed = request_seed(params.seed, index)
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        try:
            response = self._client.post("/chat/completions", json=body)
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
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise EngineError(f"remote engine {self._client.base_url} failed: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
