"""What every student runtime offers: the Runtime protocol, a row's sampling parameters, and the
stream of events (text deltas, then Finished or Failed) that a row produces."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol


@dataclass(frozen=True)
class RowParams:
    """Sampling parameters of one sequence (one choice of a completion)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length"
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
    base_path: Path
    tokenizer: object
    max_model_len: int

    def queue_depth(self) -> int: ...

    def start(self, prompt_ids: list[int], params: RowParams, adapter: str | None) -> RowStream: ...

    async def load_adapter(self, name: str, path: Path) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...
