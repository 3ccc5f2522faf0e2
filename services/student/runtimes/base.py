"""What every student runtime offers: the Runtime protocol, a row's sampling parameters, and the
stream of events (text deltas, then Finished or Failed) that a row produces."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol

# Optional features a runtime may declare in `supports`; serving_chat refuses a request that
# needs one the runtime lacks, with a 400 naming the request field.
LOGPROBS = "logprobs"
PENALTIES = "penalties"  # presence_penalty, frequency_penalty
LOGIT_BIAS = "logit_bias"
STRUCTURED_OUTPUT = "structured_output"  # response_format, forced tool calls


@dataclass(frozen=True)
class RowParams:
    """Sampling parameters of one sequence (one choice of a completion)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely ones
    json_schema: dict[str, Any] | None = None  # the output must be JSON valid against it
    json_object: bool = False  # the output must be a JSON object


@dataclass(frozen=True)
class TokenChoice:
    """A generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str
    logprobs: tuple[TokenChoice, ...] = field(default=())  # one per token, when asked for


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str
    dead: str | None = None  # set when the runtime's engine died under the row: why


Event = Delta | Finished | Failed


class RowStream:
    """Events of one sequence, produced by any thread, consumed on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False  # read by the generating thread: stop this row
        self.closed = False
        self.on_cancel: Callable[[], None] | None = None  # e.g. cancel the task that feeds this stream

    def emit(self, event: Event) -> None:
        """Thread-safe."""
        if self.closed:
            return
        if isinstance(event, (Finished, Failed)):
            self.closed = True
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown)
            pass

    def emit_now(self, event: Event) -> None:
        """On the event loop itself."""
        if self.closed:
            return
        if isinstance(event, (Finished, Failed)):
            self.closed = True
        self._queue.put_nowait(event)

    def cancel(self) -> None:
        if not self.cancelled and not self.closed and self.on_cancel is not None:
            self.on_cancel()
        self.cancelled = True

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return


class Runtime(Protocol):
    """A runtime that can die under its callers (vLLM) also has `dead`: None while it can
    generate, else why not (shared.engines.base.engine_dead_reason reads it)."""

    kind: str
    supports: frozenset[str]  # of LOGPROBS, PENALTIES, LOGIT_BIAS, STRUCTURED_OUTPUT
    serves_adapters: bool  # load_adapter works; False: LoRA students need merged weights (a runtime each)
    base_path: Path
    tokenizer: object
    max_model_len: int

    def queue_depth(self) -> int: ...

    def start(self, prompt_ids: list[int], params: RowParams, adapter: str | None) -> RowStream: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...
