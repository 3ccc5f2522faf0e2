"""Logging in and out. The admin token goes in a POST body, never a URL; a login opens a session
on the server (console/sessions.py) whose random secret comes back as an HTTP-only, Secure,
SameSite=Strict cookie scoped to /console: scripts cannot read it, other sites' pages cannot send
it, and the JSON API (bearer tokens only) never accepts it. Failed logins count against the
client address's DSC_AUTH_FAILURE_LIMIT, as failed bearer tokens do."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from services.teacher.console.sessions import close_session, open_session
from services.teacher.console.web import COOKIE, PREFIX, SameOrigin, State, redirect, render
from shared.errors import Overloaded
from shared.web.auth import Scope, auth_enabled, identify, refuse_throttled

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", error=None)


@router.post("/login", response_class=HTMLResponse, dependencies=[SameOrigin])
def login(request: Request, state: State, token: Annotated[str, Form(max_length=4096)] = "") -> Response:
    settings = request.app.state.settings
    if not auth_enabled(settings):
        return redirect("/jobs")
    throttle = request.app.state.teacher_app.state.auth_throttle
    try:
        address = refuse_throttled(request, throttle)
    except Overloaded as refused:
        return render(request, "login.html", code=429, error=refused.message, headers={"Retry-After": str(refused.retry_after)})
    caller = identify(settings, token) if token else None
    if caller is None or caller.scope is not Scope.ADMIN:
        if throttle is not None:
            throttle.failed(address)
        # One message for an unknown token and a client key: the form does not say which tokens exist.
        return render(request, "login.html", code=401, error="That is not the admin token (DSC_ADMIN_TOKEN).")
    lifetime = timedelta(hours=settings.console_session_hours)
    secret = open_session(state.sessions, token, lifetime)
    response = redirect("/jobs")
    response.set_cookie(COOKIE, secret, max_age=int(lifetime.total_seconds()), path=PREFIX, secure=True, httponly=True,
                        samesite="strict")
    return response


@router.post("/logout", dependencies=[SameOrigin])
def logout(request: Request, state: State) -> Response:
    """Ends the session on the server too: a copy of the cookie opens nothing afterwards."""
    if secret := request.cookies.get(COOKIE):
        close_session(state.sessions, secret)
    response = redirect("/login")
    response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


