"""Field types of request bodies, shared by every API that takes text, seeds or counts
(the teacher's sampling and task requests, the student's chat completions)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def _valid_unicode(value: str) -> str:
    # JSON allows "\ud800", Python keeps it, and every tokenizer, database driver and log line
    # then fails on it: refuse it at the door.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode: a lone surrogate at character {error.start}") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
"""A request string: any Unicode text, but no lone surrogate."""

# Bounds of a request seed: a 64-bit signed integer, as vLLM's OpenAI server bounds it.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
Seed = Annotated[int, Field(strict=True, ge=SEED_MIN, le=SEED_MAX)]
Count = Annotated[int, Field(strict=True, ge=1)]
"""A positive whole number; `true` is not 1, and "3" is not 3."""
Real = Annotated[float, Field(allow_inf_nan=False)]
"""A finite number: JSON's non-standard Infinity and NaN are refused."""
