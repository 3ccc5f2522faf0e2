"""A private asyncio event loop in a daemon thread, for engines whose backend is asynchronous
(vLLM's `AsyncLLM`, an async HTTP client) while their callers are plain threads.

Any thread calls `run(coroutine)` and blocks until it is done; all coroutines share the one
loop, so requests of concurrent callers meet in the backend at once (continuous batching on
vLLM, concurrent connections over HTTP) and each caller gets back only what its own
coroutine returned. `close()` cancels whatever is in flight, so blocked callers wake up with
`EngineClosed` instead of waiting for work that will never finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable, Coroutine, Iterable, TypeVar

from shared.engines.base import EngineClosed

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineLoop:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._closing = threading.Event()
        self._tasks: set[asyncio.Task] = set()  # touched on the loop only
        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Schedule `coroutine` on the loop from any (other) thread; cancelling the returned
        future cancels the coroutine. Closing the loop ends it with EngineClosed."""
        if self._closing.is_set():
            coroutine.close()
            raise EngineClosed()
        return asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run `coroutine` on the loop from any (other) thread and return its result."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError:
            raise EngineClosed() from None
        except BaseException:
            future.cancel()  # the caller gave up (timeout, KeyboardInterrupt): stop its requests too
            raise

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        # close() sets _closing before it schedules the cancellation, so a coroutine that starts
        # after that cancellation ran still sees the flag here and never reaches the backend.
        if self._closing.is_set():
            coroutine.close()
            raise EngineClosed()
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            return await coroutine
        except asyncio.CancelledError:
            if self._closing.is_set():  # cancelled by close(): the caller's future says why
                raise EngineClosed() from None
            raise
        finally:
            self._tasks.discard(task)

    def close(self, finalize: Callable[[], Awaitable[None] | None] | None = None, *, timeout: float = 10.0) -> None:
        """Cancel the calls in flight (each wakes up with EngineClosed), run `finalize` on the
        loop (the backend's own shutdown), stop the loop. Bounded by about 2 x `timeout`."""
        self._closing.set()  # at once, also while another thread's close() is still finishing
        with self._close_lock:  # a second close() waits for the first, then returns
            if self._closed:
                return
            self._closed = True
            self._close(finalize, timeout)

    def _close(self, finalize: Callable[[], Awaitable[None] | None] | None, timeout: float) -> None:
        async def cancel_all() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            if finalize is not None:
                result = finalize()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, timeout)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(2 * timeout)
        except Exception:
            log.warning("%s: shutting the engine down failed or timed out", self.name, exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


async def gather_or_cancel(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Results in order; when one fails (or the caller is cancelled), the others are cancelled
    too, so a failed batch leaves nothing running in the backend."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
