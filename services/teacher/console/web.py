"""What every console page shares: the teacher's state, the login cookie, the same-origin check on
forms, the templates (autoescaped: prompts and answers are untrusted text) and form values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Iterator
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.orm import Session

from services.teacher.console.sessions import session_token
from services.teacher.state import TeacherState
from shared.errors import Forbidden, InvalidRequest
from shared.web.auth import Caller, Scope, auth_enabled, identify
from shared.web.proxies import public_host

PREFIX = "/console"
COOKIE = "dsc_console"  # the session's secret (console/sessions.py), never the token


class LoginRequired(Exception):
    """No valid console cookie: a page redirects to the login form, anything else answers 401."""


@dataclass(frozen=True)
class ConsoleUser:
    caller: Caller
    token: str | None  # the admin token from the cookie (None with auth off): the playground's bearer for the student


def teacher_state(request: Request) -> TeacherState:
    return request.app.state.teacher_app.state.teacher


def db_session(state: Annotated[TeacherState, Depends(teacher_state)]) -> Iterator[Session]:
    with state.readers() as session:
        yield session


def console_user(request: Request, state: Annotated[TeacherState, Depends(teacher_state)]) -> ConsoleUser:
    """The admin behind the console cookie's session. With no tokens configured the API is open
    (and bound to loopback), and so is the console."""
    settings = request.app.state.settings
    if not auth_enabled(settings):
        return ConsoleUser(Caller(Scope.ADMIN, None), None)
    secret = request.cookies.get(COOKIE)
    token = None
    if secret:
        with state.readers() as session:
            token = session_token(session, secret)
    caller = identify(settings, token) if token else None
    if caller is None or caller.scope is not Scope.ADMIN:  # no session, or the admin token changed since the login
        raise LoginRequired()
    return ConsoleUser(caller, token)


def same_origin(request: Request) -> None:
    """Form posts only from the console's own pages. The cookie is SameSite=Strict already; the
    Origin header (else the Referer) must name the host the browser addressed as well (behind a
    trusted proxy that rewrites Host, the one it forwards: shared/web/proxies.py)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    host = public_host(request)
    if not source or not host or urlsplit(source).netloc != host:
        raise Forbidden("cross-site form post refused: the console accepts posts from its own pages only")


def posting_user(_origin: Annotated[None, Depends(same_origin)], user: Annotated[ConsoleUser, Depends(console_user)]) -> ConsoleUser:
    return user


State = Annotated[TeacherState, Depends(teacher_state)]
Db = Annotated[Session, Depends(db_session)]
Admin = Annotated[ConsoleUser, Depends(console_user)]
AdminPost = Annotated[ConsoleUser, Depends(posting_user)]
SameOrigin = Depends(same_origin)


def wants_page(request: Request) -> bool:
    """A browser navigating (GET/HEAD for HTML) gets pages and redirects; anything else JSON."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


# --- templates ------------------------------------------------------------------------------------


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _signed(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


_environment = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
_environment.filters.update(when=_when, signed=_signed, share=_share)
_environment.globals.update(prefix=PREFIX)
templates = Jinja2Templates(env=_environment)


def render(request: Request, name: str, *, code: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    context.setdefault("auth_on", auth_enabled(request.app.state.settings))
    return templates.TemplateResponse(request, name, context, status_code=code, headers=headers)


def redirect(path: str) -> RedirectResponse:
    """303: after a form post the browser GETs the next page (a reload does not post again)."""
    return RedirectResponse(PREFIX + path, status_code=303)


async def form_values(request: Request) -> dict[str, str]:
    """A posted form's text fields (the console posts no files)."""
    return {key: value for key, value in (await request.form()).items() if isinstance(value, str)}


def pick(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """A filter value from a query string: one of `allowed`, else no filter (an empty <select> option)."""
    return value if value in allowed else None


def number(value: str | None, name: str) -> float | None:
    """An optional number from a query string (blank: no filter); 400 for anything else."""
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {value!r}", param=name) from None
