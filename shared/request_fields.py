"""Field types of request bodies, shared by every API that takes text, seeds or counts
(the teacher's sampling and task requests, the student's chat completions)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field


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

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""A task's name: a lower-case slug (tasks, and the runs and evaluations that name one)."""

# One rule for numbers in every request body: a number is a JSON number. `true` is not 1 and
# "0.5" is not 0.5 (pydantic's lax mode would take both), whatever the field.
def whole_number(value: object) -> object:
    # JSON Schema's integer: 3 and 3.0 alike (a client may send either), never true or "3".
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


def real_number(value: object) -> object:
    # JSON Schema's number: 1 and 1.0 alike, never true or "0.5".
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return value


# Bounds of a request seed: the integers JSON carries exactly everywhere (I-JSON, RFC 7493: many
# clients and validators read JSON numbers as doubles, and a seed near vLLM's 64-bit bound would
# arrive as another number, or one vLLM refuses).
SEED_MIN, SEED_MAX = -(2**53 - 1), 2**53 - 1
ROW_ID_MAX = 2**63 - 1  # a database row id (a 64-bit signed integer): larger ones cannot exist
# Bounds go before the validator inside Annotated: pydantic then states them in the JSON Schema
# (minimum, maximum); bounds added around an Annotated type with a validator, or on an optional
# one, come out as non-standard keys ("ge").
Whole = Annotated[int, BeforeValidator(whole_number)]
"""A whole number; `true` is not 1, and "3" is not 3 (3.0 is). Bound it with Field(ge=...) only
where the field is not optional."""
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX), BeforeValidator(whole_number)]
Count = Annotated[int, Field(ge=1), BeforeValidator(whole_number)]
"""A positive whole number."""
NonNegative = Annotated[int, Field(ge=0), BeforeValidator(whole_number)]
# "Something besides white space", spelled out: `\S` differs between the regex engines that read
# the pattern (pydantic's Rust engine counts U+0085 as space, JSON Schema's ECMAScript does not,
# and the other way round for U+FEFF), so a client's validator and the service would disagree.
NOT_SPACE = r"[^\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
NonBlank = Annotated[str, Field(min_length=1, pattern=NOT_SPACE), AfterValidator(_valid_unicode)]
"""Text with something besides white space in it."""
Real = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(real_number)]
"""A finite number: JSON's non-standard Infinity and NaN are refused, as are true and "0.5"."""


def bounded_real(**bounds: float) -> Any:
    """A Real with bounds (ge, gt, le, lt) that the JSON Schema states, optional or not."""
    return Annotated[float, Field(allow_inf_nan=False, **bounds), BeforeValidator(real_number)]


Share = bounded_real(ge=0, le=1)
"""A number from 0 to 1."""
