"""Logging in and out. The admin token goes in a POST body, never a URL, and comes back as an
HTTP-only, Secure, SameSite=Strict cookie scoped to /console: scripts cannot read it, other sites'
pages cannot send it, and the JSON API (bearer tokens only) never accepts it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from services.teacher.console.web import COOKIE, PREFIX, SESSION_S, SameOrigin, redirect, render
from shared.web.auth import Scope, auth_enabled, identify

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", error=None)


@router.post("/login", response_class=HTMLResponse, dependencies=[SameOrigin])
def login(request: Request, token: Annotated[str, Form(max_length=4096)] = "") -> Response:
    settings = request.app.state.settings
    if not auth_enabled(settings):
        return redirect("/jobs")
    caller = identify(settings, token) if token else None
    if caller is None or caller.scope is not Scope.ADMIN:
        # One message for an unknown token and a client key: the form does not say which tokens exist.
        return render(request, "login.html", code=401, error="That is not the admin token (DSC_ADMIN_TOKEN).")
    response = redirect("/jobs")
    response.set_cookie(COOKIE, token, max_age=SESSION_S, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout", dependencies=[SameOrigin])
def logout() -> Response:
    response = redirect("/login")
    response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


