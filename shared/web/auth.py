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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.admin_token)


def open_bind_refusal(settings: Settings, *, insecure: bool) -> str | None:
    """Why a service must not start on settings.host (None: it may): with no tokens everything is
    open, so only loopback is allowed unless the operator says --insecure."""
    if auth_enabled(settings) or settings.host in LOOPBACK_HOSTS or insecure:
        return None
    return f"no DSC_API_KEYS / DSC_ADMIN_TOKEN configured: refusing to bind {settings.host}; set keys or pass --insecure"


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
