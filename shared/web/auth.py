"""Bearer-token auth (DESIGN §5): client keys open /v1/*, the admin token opens /admin/* too.

Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request

from shared.errors import Forbidden, Unauthorized
from shared.settings import Settings


class Scope(str, Enum):
    CLIENT = "client"
    ADMIN = "admin"


def _matches(token: str, candidates: list[str]) -> bool:
    # Check every candidate, so the time taken does not reveal which one (or whether any) matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_token)


def caller_scope(request: Request) -> Scope:
    """The scope the bearer token grants, or 401. With no tokens configured everything is open
    (the service then binds to loopback unless told --insecure)."""
    settings: Settings = request.app.state.settings
    if not auth_enabled(settings):
        return Scope.ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    if settings.admin_token and _matches(token, [settings.admin_token]):
        return Scope.ADMIN
    if _matches(token, settings.api_keys):
        return Scope.CLIENT
    raise Unauthorized("invalid bearer token")


def require_client(scope: Annotated[Scope, Depends(caller_scope)]) -> Scope:
    return scope


def require_admin(scope: Annotated[Scope, Depends(caller_scope)]) -> Scope:
    if scope is not Scope.ADMIN:
        raise Forbidden("this endpoint needs the admin token")
    return scope


ClientScope = Annotated[Scope, Depends(require_client)]
AdminScope = Annotated[Scope, Depends(require_admin)]
