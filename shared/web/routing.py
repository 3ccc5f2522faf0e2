"""The route class of every API router: the caller is authenticated before the request body is
read, and each operation documents the error statuses it can answer, in the one error body.

FastAPI parses a JSON body before it runs any dependency, so an anonymous request with malformed
JSON would get a 400 before its missing token was noticed. AuthFirstRoute runs the route's auth
(shared.web.auth.authenticate, and the admin check where the route requires it) first; the
dependency then finds the caller already known (the rate limit counts the request once).

The statuses every route of a kind can answer are added to its OpenAPI `responses` here, so routes
only name their own (404, 409, ...) with shared.web.errors.error_responses:
413 (every request: the body limit), 401 and 429 (authenticated routes), 403 (admin routes), and the
validation status (422; 400 for OpenAI's API) where the route takes parameters or a body, plus 400
for malformed JSON where it takes a body.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Coroutine

from fastapi import FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field

from shared.web.auth import Scope, authenticate, check_admin, require_admin
from shared.web.errors import ERROR_DESCRIPTIONS, ErrorBody


def required_scope(dependant: Dependant) -> Scope | None:
    """The scope a route's dependencies require: ADMIN, CLIENT, or None for an open route."""
    calls = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        calls.add(current.call)
        stack.extend(current.dependencies)
    if require_admin in calls:
        return Scope.ADMIN
    if authenticate in calls:
        return Scope.CLIENT
    return None


class AuthFirstRoute(APIRoute):
    validation_status = 422  # what shared.web.errors answers to a request that does not validate

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.responses = dict(self.responses)
        self.scope_required = required_scope(self.dependant)
        self._document_errors()

    def _document_errors(self) -> None:
        statuses = {413}
        if self.scope_required is not None:
            statuses |= {401, 429}
        if self.scope_required is Scope.ADMIN:
            statuses.add(403)
        if self._flat_dependant.path_params or self._flat_dependant.query_params or self._flat_dependant.header_params \
                or self._flat_dependant.cookie_params or self.body_field is not None:
            statuses.add(self.validation_status)
        if self.body_field is not None:
            statuses.add(400)
        for status in sorted(statuses):
            if status in self.responses or str(status) in self.responses:
                continue
            self.responses[status] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
            self.response_fields[status] = create_model_field(name=f"Response_{status}_{self.unique_id}", type_=ErrorBody,
                                                              mode="serialization")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            # Before the handler reads the body; errors are answered by the app's handlers.
            scope = self.scope_required
            if scope is not None:
                caller = authenticate(request)
                if scope is Scope.ADMIN:
                    check_admin(caller.scope)
            return await handler(request)

        return authenticated


class OpenAIRoute(AuthFirstRoute):
    validation_status = 400  # OpenAI answers an invalid body with 400



def document_errors_as_json(app: FastAPI) -> None:
    """Fix up what FastAPI's schema generation says about errors: an error is the JSON error body
    even on a route whose success is text or a file (FastAPI gives every response the route's
    media type), and FastAPI's own 422 body (HTTPValidationError), which it adds to every operation
    with parameters unless a 422 is documented, is never sent (our handlers answer validation
    errors in the one error body; OpenAIRoute's as 400)."""
    generate = app.openapi
    error_body = {"$ref": "#/components/schemas/ErrorBody"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                for status, response in list(responses.items()):
                    schemas = [media.get("schema") for media in response.get("content", {}).values()]
                    if status == "422" and "HTTPValidationError" in json.dumps(schemas):
                        del responses[status]
                    elif error_body in schemas:
                        response["content"] = {"application/json": {"schema": error_body}}
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi


SchemaLimits = dict[str, dict[str, dict[str, int]]]
"""schema name -> property -> JSON Schema keyword -> value; `items.<keyword>` bounds each item."""


def document_limits(app: FastAPI, limits: SchemaLimits) -> None:
    """Write the service's configured limits into its OpenAPI schema (maximum, maxItems, each
    item's maxLength), so a request valid under the schema is never refused for a documented
    limit the client could not see. Where the model has a tighter bound of its own, it stays."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema["components"]["schemas"]
        for model, fields in limits.items():
            for field, keywords in fields.items():
                prop = components[model]["properties"][field]
                for alternative in prop.get("anyOf", [prop]):
                    if alternative.get("type") == "null":
                        continue
                    for keyword, value in keywords.items():
                        target = alternative["items"] if keyword.startswith("items.") else alternative
                        keyword = keyword.removeprefix("items.")
                        target[keyword] = min(value, target.get(keyword, value))
        return schema

    app.openapi = openapi
