"""Every failure leaves a service as {"error": {"type", "message"}} with a 4xx/5xx status.

Handlers are installed once per app, so no route builds error bodies itself; an unexpected
exception (a bug) is answered by RequestContextMiddleware (shared/web/middleware.py), which every
app installs.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.db.outages import is_outage

from shared.errors import DscError, Forbidden, NotFound, NotReady, PayloadTooLarge, Unauthorized

# The error type of each HTTP status that Starlette itself raises (unknown route, wrong method, ...).
_HTTP_KINDS = {error.status_code: error.error_type for error in (Unauthorized, Forbidden, NotFound, PayloadTooLarge)}


class ErrorDetail(BaseModel):
    type: str = Field(description="What kind of error: invalid_request_error, authentication_error, not_found_error, ...")
    message: str = Field(description="What went wrong, in plain words.")
    param: str | None = Field(None, description="The request field the error is about, where there is one.")
    code: str | None = Field(None, description="A machine-readable code, where one applies (e.g. model_not_found).")


class ErrorBody(BaseModel):
    """The one error body of every service: {"error": {"type", "message"}}."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "Bad request: malformed JSON, or a request the service cannot do",
    401: "Missing or invalid bearer token",
    403: "The token does not open this endpoint",
    404: "Not found",
    409: "Conflict with the resource's current state",
    413: "Request body too large",
    422: "The request does not validate",
    429: "Rate limit or capacity reached; retry after Retry-After seconds",
    502: "The engine or a reward model failed",
    503: "Not ready (starting, stopping, engine dead or database unavailable); retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting `statuses` with the one error body (routes pass it as
    `responses=`; shared.web.routing adds the statuses every route of a kind can answer)."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS.get(status, "Error")} for status in statuses}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at the request's path (Starlette's own 405 names
    only the first route that matched the path, and FastAPI adds one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        # A route matches fully when asked with one of its own methods: then its path is this one.
        if route_methods and route.matches({**request.scope, "method": next(iter(route_methods))})[0] is Match.FULL:
            methods |= set(route_methods)
    return sorted(methods)


def encodable(text: str) -> str:
    """`text` as UTF-8 can carry it: a lone surrogate a client sent (JSON's "\\udc80") is quoted back
    as its escape instead of failing the error response itself."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, error_type: str, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict | None = None, openai: bool = False) -> JSONResponse:
    """The one error body: {"error": {"type", "message"}}, with "param" and "code" when the error
    has them. `openai`: OpenAI's shape, which always carries both (null when unknown), as its
    clients expect them."""
    body: dict = {"type": error_type, "message": encodable(message)}
    if param is not None or openai:
        body["param"] = encodable(param) if param is not None else None
    if code is not None or openai:
        body["code"] = code
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        first_param = first_param or (location[0] if location else None)
        if item.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {item.get('ctx', {}).get('error', item.get('msg'))}")
        else:
            parts.append(f"{where}: {item.get('msg')}")
    return "; ".join(parts), first_param


def install_error_handlers(app: FastAPI, *, openai: bool = False) -> None:
    """`openai`: bodies in OpenAI's shape, and an invalid body is a 400 as OpenAI answers it (else
    422, and 400 for malformed JSON), so the `openai` client raises its own types."""

    @app.exception_handler(DscError)
    async def _dsc_error(_request: Request, error: DscError) -> JSONResponse:
        retry_after = getattr(error, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return error_response(error.status_code, error.error_type, error.message, param=error.param, code=error.code,
                              headers=headers, openai=openai)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        status = 400 if openai or "malformed JSON" in message else 422
        return error_response(status, "invalid_request_error", message, param=param, openai=openai)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, error: DBAPIError) -> JSONResponse:
        if not is_outage(error):
            raise error  # a bug, not an outage: the middleware logs it and answers 500
        unavailable = NotReady("the database is unavailable; retry shortly (nothing was written)")
        return error_response(unavailable.status_code, unavailable.error_type, unavailable.message,
                              headers={"Retry-After": str(unavailable.retry_after)}, openai=openai)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(error.status_code, _HTTP_KINDS.get(error.status_code, DscError.error_type), str(error.detail),
                              headers=headers or None, openai=openai)
