"""The console: a small web UI for the people who run distillations, served by the teacher at
/console behind the admin token (docs/operations.md, "Console").

Server-rendered pages (Jinja2, autoescaped) with a few lines of plain JavaScript that refresh the
live parts; charts drawn by matplotlib on the server; nothing fetched from elsewhere. Every write and
most reads go through the JSON API's route functions (services/teacher/routes); queries.py holds
the few reads the API has no call for (per-job reward figures, chains with their steps, cost).

A mounted app of its own, so that it answers in its own way: a page asked for without the login
cookie redirects to the login form, anything else is a 401 JSON error; errors on pages are pages.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from services.teacher.console import auth, cost, distillations, jobs, pairs, students
from services.teacher.console.web import PREFIX, LoginRequired, render, wants_page
from shared.errors import DscError, NotFound
from shared.web.errors import error_response, install_error_handlers

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}

# Scripts and styles from this origin only, images from it or inline data (the charts); no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_console(teacher: FastAPI) -> FastAPI:
    """The console app, to mount at /console on the teacher app (it reads the teacher's state)."""
    console = FastAPI(title="dSC console", docs_url=None, redoc_url=None, openapi_url=None)
    console.state.teacher_app = teacher
    console.state.settings = teacher.state.settings
    install_error_handlers(console)

    @console.exception_handler(LoginRequired)
    async def _login_required(request: Request, _error: LoginRequired) -> Response:
        if wants_page(request):
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        return error_response(401, "authentication_error", f"log in first: POST the admin token to {PREFIX}/login")

    @console.exception_handler(DscError)
    async def _dsc_error(request: Request, error: DscError) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return render(request, "error.html", code=error.status_code, error=error)
        return error_response(error.status_code, error.error_type, error.message, param=error.param)

    @console.middleware("http")
    async def _security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @console.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/jobs", status_code=303)

    @console.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    for module in (auth, jobs, pairs, distillations, students, cost):
        console.include_router(module.router)
    return console
