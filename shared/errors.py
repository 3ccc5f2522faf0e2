"""One error hierarchy for the whole product.

Every error a user can cause carries an HTTP status and an error type, so the services turn any of
them into the same JSON body: {"error": {"type": ..., "message": ...}} (shared/web/errors.py builds it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def validation_summary(error: "ValidationError", whole: str = "") -> str:
    """A pydantic error as one line: each failing field's dotted path and message (`whole` stands
    for an error of the whole model, which has no path)."""
    return "; ".join(f"{'.'.join(str(part) for part in item['loc']) or whole}: {item['msg']}" for item in error.errors())


class DscError(Exception):
    """Base of every error a caller can cause or should see in plain words."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None  # OpenAI's machine-readable code, where one applies (e.g. model_not_found)

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(DscError):
    """The request is well formed but asks for something impossible or out of bounds."""


class NotFound(DscError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(DscError):
    status_code = 409
    error_type = "conflict_error"


class MissingDependency(DscError):
    """A reward model, engine or model file the configuration asks for is not installed here."""

    error_type = "missing_dependency_error"


class Unauthorized(DscError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(DscError):
    status_code = 403
    error_type = "permission_error"


class PayloadTooLarge(DscError):
    status_code = 413
    error_type = "payload_too_large_error"


class HeadersTooLarge(DscError):
    status_code = 431
    error_type = "headers_too_large_error"


class Overloaded(DscError):
    """The queue or engine is full; the caller should retry after `retry_after` seconds."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(DscError):
    """The service is starting (engine loading) or stopping; retry after `retry_after` seconds."""

    status_code = 503
    error_type = "service_unavailable_error"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RewardError(DscError):
    """A reward model could not score its input (e.g. an unparseable judge answer)."""

    status_code = 502
    error_type = "reward_error"


class EngineError(DscError):
    status_code = 502
    error_type = "engine_error"
