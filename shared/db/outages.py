"""What workers do while the database cannot answer (down, restarting, failing over, SQLite locked
past its busy timeout): wait and try again, logging the outage once rather than a traceback a poll.

Training and evaluation treat their progress writes and cancel checks as advisory: one that fails
during an outage is skipped (the next one, or the run's final commit, says the same), so an outage
of a few seconds costs a distillation nothing. Only the final commit must land; if the database is
still away then, the worker's lease runs out and the next claim resumes the run from its checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

T = TypeVar("T")

REPEAT_EVERY_S = 60.0  # while an outage lasts, one line a minute says it still does
MAX_WAIT_S = 30.0


def is_outage(error: BaseException) -> bool:
    """The database could not answer now; the same statement may succeed later."""
    return isinstance(error, (OperationalError, InterfaceError)) or (isinstance(error, DBAPIError) and error.connection_invalidated)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


class OutageLog:
    """One worker's view of database outages: the first failure is logged (without a traceback),
    then one line a minute while it lasts, and one when the database answers again. `failed`
    returns how long to wait before the next try: the poll interval doubling up to 30 s."""

    def __init__(self, log: logging.Logger, who: str, poll_seconds: float) -> None:
        self.log, self.who, self.poll = log, who, poll_seconds
        self.failures = 0
        self.since = 0.0
        self.last_logged = 0.0

    def failed(self, error: BaseException) -> float:
        now = time.monotonic()
        if self.failures == 0:
            self.since = self.last_logged = now
            self.log.warning("%s: the database is unavailable (%s); waiting for it", self.who, first_line(error))
        elif now - self.last_logged >= REPEAT_EVERY_S:
            self.last_logged = now
            self.log.warning("%s: the database is still unavailable after %.0f s (%s)", self.who, now - self.since, first_line(error))
        self.failures += 1
        return min(self.poll * 2 ** min(self.failures - 1, 10), MAX_WAIT_S)

    def recovered(self) -> None:
        if self.failures:
            self.log.warning("%s: the database answers again after %.0f s (%d failed tries)", self.who, time.monotonic() - self.since, self.failures)
        self.failures = 0

    def waiting(self, call: Callable[[], T], stopping: threading.Event) -> T:
        """`call()`, tried again (with the backoff of `failed`) while the database is away: for a
        read the work cannot go on without, e.g. the active student an evaluation compares with."""
        while True:
            try:
                result = call()
            except Exception as error:
                if not is_outage(error) or stopping.is_set():
                    raise
                stopping.wait(self.failed(error))
                continue
            self.recovered()
            return result

    def advisory(self, call: Callable[[], T], default: T) -> T:
        """`call()`, or `default` when the database is away (logged as part of the outage)."""
        try:
            result = call()
        except Exception as error:
            if not is_outage(error):
                raise
            self.failed(error)
            return default
        self.recovered()
        return result


def work_loop(run_once: Callable[[], bool], *, stopping: threading.Event, poll_seconds: float, outage: OutageLog,
              paused: Callable[[], bool] = lambda: False, once: bool = False) -> None:
    """The poll loop of every worker (the teacher's job workers, the trainer): `run_once` claims and
    processes at most one piece of work and says whether it found any. Sleeps `poll_seconds` when
    there was none, or while `paused()` (the teacher's engine loading or dead); waits out database
    outages; logs any other error and goes on, so one bad piece of work never kills the worker.
    With `once`, returns when the queue is empty."""
    while not stopping.is_set():
        if paused():
            stopping.wait(poll_seconds)
            continue
        try:
            claimed = run_once()
            outage.recovered()
        except Exception as error:
            if is_outage(error):
                stopping.wait(outage.failed(error))
                continue
            outage.log.exception("%s: unexpected error", outage.who)
            claimed = False
        if once and not claimed:
            return
        if not claimed:
            stopping.wait(poll_seconds)
