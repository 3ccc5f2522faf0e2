"""Settings for tests: a suite's defaults with one test's overrides."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings


def settings_with(defaults: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    """Settings(**defaults) with `overrides` on top; a group's overrides (jobs={"workers": 0})
    replace only the fields they name, so the suite's other defaults for that group stay."""
    values = dict(defaults)
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and isinstance(values.get(key), dict) else value
    return Settings(**values)
