"""Settings for tests: a suite's defaults with one test's overrides."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

# The suites' servers are shared by many tests from one address (127.0.0.1), several of which send
# bad tokens on purpose: a generous failed-authentication limit, so one test's refusals do not turn
# the next test's requests into 429s. tests/console/test_sessions.py tests the limit itself.
TEST_AUTH_FAILURES = "1000/minute"


def settings_with(defaults: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    """Settings(**defaults) with `overrides` on top; a group's overrides (jobs={"workers": 0})
    replace only the fields they name, so the suite's other defaults for that group stay."""
    values = dict(defaults)
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and isinstance(values.get(key), dict) else value
    return Settings(**values)
