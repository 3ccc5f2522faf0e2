"""Ending a service process on purpose (its engine died), in bounded time."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

EXIT_DEADLINE_SECONDS = 45.0  # the most an exit for a dead engine waits for the orderly shutdown


def exit_after(code: int, deadline: float = EXIT_DEADLINE_SECONDS) -> None:
    """Make sure the process ends with `code` within `deadline` seconds, even if its orderly
    shutdown hangs (a daemon timer: a process that ends sooner is not held up)."""

    def force() -> None:
        log.error("the orderly shutdown did not end within %.0f s: exiting now with status %d", deadline, code)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(deadline, force)
    timer.daemon = True
    timer.start()
