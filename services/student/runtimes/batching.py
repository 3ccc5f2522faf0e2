"""Micro-batching for engines without continuous batching (the transformers path).

Requests arrive one by one on the event loop; a batched `generate` is many times faster than the
same requests run one at a time (~8x at batch 8 on two cores; docs/architecture.md §7.2). The batcher waits a
short window after the first request of a batch for more to arrive, then hands the whole batch to
one worker thread. Requests that arrive while a batch runs wait for the next one, so under load
batches fill up by themselves and the window costs nothing.

The worker is a single thread: a batch at a time, and model changes (adapter loads) submitted to
the same executor run between batches, never during one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class Batchable(Protocol):
    cancelled: bool

    def fail(self, error: BaseException) -> None: ...


T = TypeVar("T", bound=Batchable)


class MicroBatcher(Generic[T]):
    """Gathers items submitted within `window_s` (up to `max_batch`) into one call of `run`."""

    def __init__(
        self,
        run: Callable[[list[T]], None],
        *,
        executor: ThreadPoolExecutor,
        max_batch: int = 16,
        window_s: float = 0.015,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch = max(1, max_batch)
        self.window_s = max(0.0, window_s)
        self._on_batch = on_batch
        self._queue: asyncio.Queue[T] | None = None
        self._task: asyncio.Task | None = None
        self._bound_loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # recent batch sizes (tests, debugging)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, item: T) -> None:
        """Queue an item (call on the event loop). Admission limits are the caller's business."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._bound_loop is not loop:  # first use, or a new event loop (a restarted server)
            self._queue, self._bound_loop, self._task = asyncio.Queue(), loop, None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop(), name="micro-batcher")
        self._queue.put_nowait(item)

    async def _gather(self) -> list[T]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.TimeoutError, TimeoutError):
                break
        while len(batch) < self.max_batch and not self._queue.empty():  # whatever else is already waiting
            batch.append(self._queue.get_nowait())
        return [item for item in batch if not item.cancelled]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                await loop.run_in_executor(self._executor, self._run, batch)
            except asyncio.CancelledError:
                for item in batch:
                    item.cancelled = True
                raise
            except Exception as exc:  # `run` should fail its own items; this is the last line of defence
                log.exception("batch of %d failed", len(batch))
                for item in batch:
                    item.fail(exc)

    async def close(self) -> None:
        if self._task is not None and self._bound_loop is asyncio.get_running_loop():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().fail(RuntimeError("the service is shutting down"))
