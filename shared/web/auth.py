"""Bearer-token auth (docs/architecture.md §2.1): client keys open /v1/*, the admin token opens /admin/* too.

Settings hold only SHA-256 digests of the tokens (shared/keys.py); a presented token is hashed
and compared with each digest in constant time, and never logged. The caller's key id (the start
of its digest) is who owns the jobs it creates, and what its rate limit counts.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Overloaded, Unauthorized
from shared.keys import hash_key, key_id
from shared.settings import Settings
from shared.web.proxies import client_address
from shared.web.ratelimit import FailureThrottle


class Scope(str, Enum):
    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the scope its token grants and its key id (None when auth is off)."""

    scope: Scope
    key_id: str | None

    @property
    def sees_all(self) -> bool:
        """Admins see every key's jobs and pairs; a client key only its own."""
        return self.scope is Scope.ADMIN

    def may_see(self, owner: str | None) -> bool:
        return self.sees_all or (self.key_id is not None and owner == self.key_id)


def _matching(token: str, digests: list[str]) -> str | None:
    """The configured digest the token hashes to, or None. Every candidate is compared, so the time
    taken does not reveal which one (or whether any) matched."""
    presented = hash_key(token).encode()
    found = None
    for digest in digests:
        if hmac.compare_digest(presented, digest.encode()):
            found = digest
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


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def identify(settings: Settings, token: str) -> Caller | None:
    """Who `token` is (admin or a client key), or None for an unknown token. The API reads it from
    the bearer header, the teacher's console from its cookie."""
    if settings.admin_token and (digest := _matching(token, [settings.admin_token])):
        return Caller(Scope.ADMIN, key_id(digest))
    if digest := _matching(token, settings.api_keys):
        return Caller(Scope.CLIENT, key_id(digest))
    return None


# The scheme as OpenAPI documents it (components.securitySchemes, `security` on each operation
# that depends on authenticate); the token itself is read by _bearer.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="A client key (DSC_API_KEYS) opens /v1/*; the admin token (DSC_ADMIN_TOKEN) opens /admin/* too.")
_CALLER = "dsc.caller"  # where the request's scope keeps the caller once authenticated


def authenticate(request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None) -> Caller:
    """The caller behind the bearer token, or 401; 429 with Retry-After past its rate limit. With
    no tokens configured everything is open (the service then binds to loopback unless told
    --insecure) and there is no key to limit. Once per request: shared.web.routing calls it before
    the body is read (a 401 comes before any 400 about the body), the route's dependency again."""
    if (known := request.scope.get(_CALLER)) is not None:
        return known
    caller = _authenticate(request)
    request.scope[_CALLER] = caller
    return caller


def _authenticate(request: Request) -> Caller:
    settings: Settings = request.app.state.settings
    if not auth_enabled(settings):
        return Caller(Scope.ADMIN, None)
    token = _bearer(request)
    if token is None:  # guesses nothing: a 401 however often, never throttled
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    throttle = getattr(request.app.state, "auth_throttle", None)
    address = refuse_throttled(request, throttle)
    caller = identify(settings, token)
    if caller is None:
        if throttle is not None:
            throttle.failed(address)
        raise Unauthorized("invalid bearer token")
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None and (retry_after := limiter.admit(caller.key_id)) is not None:
        raise Overloaded(f"rate limit of this key exceeded ({limiter.rate}, DSC_RATE_LIMIT); retry after {retry_after} s", retry_after=retry_after)
    return caller


def refuse_throttled(request: Request, throttle: FailureThrottle | None) -> str:
    """The client's address; 429 with Retry-After while it is over its failed-authentication limit
    (guessing tokens is slow however many a second the service could check)."""
    address = client_address(request)
    if throttle is not None and (retry_after := throttle.blocked(address)) is not None:
        raise Overloaded(f"too many failed authentications from this address ({throttle.rate}, DSC_AUTH_FAILURE_LIMIT); "
                         f"retry after {retry_after} s", retry_after=retry_after)
    return address


def is_admin_request(request: Request) -> bool:
    """Whether an open route's caller presented the admin token (or auth is off); never raises."""
    settings: Settings = request.app.state.settings
    if not auth_enabled(settings):
        return True
    token = _bearer(request)
    caller = identify(settings, token) if token else None
    return caller is not None and caller.scope is Scope.ADMIN


def caller_scope(caller: Annotated[Caller, Depends(authenticate)]) -> Scope:
    return caller.scope


def require_client(scope: Annotated[Scope, Depends(caller_scope)]) -> Scope:
    return scope


def require_admin(scope: Annotated[Scope, Depends(caller_scope)]) -> Scope:
    check_admin(scope)
    return scope


def check_admin(scope: Scope) -> None:
    if scope is not Scope.ADMIN:
        raise Forbidden("this endpoint needs the admin token")


ClientScope = Annotated[Scope, Depends(require_client)]
AdminScope = Annotated[Scope, Depends(require_admin)]
ClientCaller = Annotated[Caller, Depends(authenticate)]
