"""The engine protocol: batched chat generation with sampling parameters.

Every engine (vLLM, transformers, a remote OpenAI-compatible server) takes a batch of
conversations and returns one `Generation` per conversation, in order. Batching is the caller's
main lever for throughput, so engines must never loop over the batch one request at a time
unless the backend itself is per-request (the HTTP engine sends requests concurrently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 128
    # A seed makes a whole batch reproducible; engines derive one seed per request from it.
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"


@runtime_checkable
class Engine(Protocol):
    name: str
    model: str

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]: ...

    def close(self) -> None: ...


def request_seed(seed: int | None, index: int) -> int | None:
    """Seed of the `index`-th request of a seeded batch (None stays None)."""
    return None if seed is None else (seed * 1_000_003 + index) % (2**31 - 1)
