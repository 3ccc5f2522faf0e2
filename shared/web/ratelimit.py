"""Per-key request rates and per-address failed logins (`limits`, moving window, in this process's memory).

One limiter per service process: with N replicas behind a balancer a key may make N times the rate.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.settings import Settings


class KeyRateLimiter:
    """`admit(key)`: None when the key may make one more request now (the request is counted),
    else the seconds until it may (the request is not counted)."""

    def __init__(self, rate: str) -> None:
        self.rate = rate
        self._items: list[RateLimitItem] = parse_many(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRateLimiter | None:
        return cls(settings.rate_limit) if settings.rate_limit else None

    def admit(self, key: str) -> int | None:
        # Test every window first, so a request refused by one window is not counted in the others.
        full = self._full(key)
        if not full:
            if all(self._limiter.hit(item, key) for item in self._items):
                return None
            full = self._full(key) or self._items  # lost a race
        return self._retry_after(key, full)

    def _full(self, key: str) -> list[RateLimitItem]:
        return [item for item in self._items if not self._limiter.test(item, key)]

    def _retry_after(self, key: str, full: list[RateLimitItem]) -> int:
        reset = max(self._limiter.get_window_stats(item, key).reset_time for item in full)
        return max(1, math.ceil(reset - time.time()))


class FailureThrottle(KeyRateLimiter):
    """Failed authentications per client address (DSC_AUTH_FAILURE_LIMIT): `blocked(address)` is the
    seconds until the address may try again (None: it may now); `failed(address)` counts one."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FailureThrottle | None:
        return cls(settings.auth_failure_limit) if settings.auth_failure_limit else None

    def blocked(self, address: str) -> int | None:
        full = self._full(address)
        return self._retry_after(address, full) if full else None

    def failed(self, address: str) -> None:
        for item in self._items:
            self._limiter.hit(item, address)
