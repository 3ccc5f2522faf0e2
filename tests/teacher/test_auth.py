"""Auth over real HTTP, route by route: a new route cannot skip it.

Every route of the app is enumerated: /admin/* and POST /v1/tasks need the admin token (no token
→ 401, a client key → 403); every other /v1/* route needs a client key (no or a wrong token →
401); only health, metrics and the API docs are open, and any other path fails the test. The
console (/console, a mounted app) wants its login cookie on every route but the login form and its
static files: a page redirects to the login form, anything else is a 401.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from starlette.routing import Mount

from shared.logs import JsonFormatter


OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
CONSOLE_OPEN = {"/login", "/logout", "/static/{name}", "/"}  # "/" only redirects to /console/jobs, which wants the cookie


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nonexistent", path)


def _call(client, method: str, path: str):
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, _concrete(path), json=body)


def test_every_route_enforces_its_scope(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    CLIENT_KEY = teacher.client_key
    routes = [route for route in teacher.app.routes if getattr(route, "path", None)]
    checked = {"admin": 0, "client": 0}
    with teacher.client(None) as anonymous, teacher.client(CLIENT_KEY) as client, teacher.client("wrong-token") as wrong:
        for route in routes:
            if route.path in OPEN:
                continue
            if isinstance(route, Mount) and route.path == "/console":
                checked["console"] = _check_console(route, anonymous, client, teacher.admin_token)
                continue
            assert isinstance(route, APIRoute), f"unexpected non-API route {route.path}"
            for method in sorted(route.methods - {"HEAD"}):
                admin_only = route.path.startswith("/admin/") or (route.path == "/v1/tasks" and method == "POST")
                assert admin_only or route.path.startswith("/v1/"), f"{method} {route.path} is neither /v1/* nor /admin/*"
                response = _call(anonymous, method, route.path)
                assert response.status_code == 401, (method, route.path, response.status_code, response.text)
                assert response.json()["error"]["type"] == "authentication_error"
                assert _call(wrong, method, route.path).status_code == 401, (method, route.path)
                if admin_only:
                    response = _call(client, method, route.path)
                    assert response.status_code == 403, (method, route.path, response.status_code, response.text)
                    assert response.json()["error"]["type"] == "permission_error"
                    checked["admin"] += 1
                else:
                    checked["client"] += 1
    assert checked["admin"] >= 1 and checked["client"] >= 8 and checked["console"] >= 10


def _check_console(mount: Mount, *clients) -> int:
    """Every console route refuses a caller without the login cookie (a bearer token, even the
    admin's, is no login): a page redirects to the login form, anything else is a 401."""
    *callers, admin_token = clients
    checked = 0
    for route in mount.routes:
        if route.path in CONSOLE_OPEN:
            continue
        path = "/console" + _concrete(route.path)
        for method in sorted(route.methods - {"HEAD"}):
            for caller in (*callers, None):
                headers = {"Authorization": f"Bearer {admin_token}"} if caller is None else {}
                client = caller or callers[0]
                if method == "GET":
                    page = client.get(path, headers={**headers, "Accept": "text/html"}, follow_redirects=False)
                    assert page.status_code == 303 and page.headers["location"] == "/console/login", (path, page.status_code)
                response = client.request(method, path, headers={**headers, "Origin": str(client.base_url).rstrip("/")})
                assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error", (method, path)
            checked += 1
    return checked


def test_open_routes_and_admin_token_everywhere(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    CLIENT_KEY, ADMIN_TOKEN = teacher.client_key, teacher.admin_token
    with teacher.client(None) as anonymous:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
    with teacher.client(ADMIN_TOKEN) as admin:  # the admin token also opens every client route
        assert admin.get("/v1/tasks").status_code == 200
        assert admin.get("/v1/jobs").status_code == 200
    with teacher.client("") as empty:
        response = empty.get("/v1/tasks", headers={"Authorization": f"Basic {CLIENT_KEY}"})
        assert response.status_code == 401


def test_tokens_never_reach_the_logs(make_teacher, caplog):
    teacher = make_teacher(jobs={"workers": 0})
    CLIENT_KEY, ADMIN_TOKEN = teacher.client_key, teacher.admin_token
    with caplog.at_level("DEBUG"):
        with teacher.client(CLIENT_KEY) as client:
            client.get("/v1/tasks")
            client.post("/v1/tasks", json={})
        with teacher.client(ADMIN_TOKEN) as admin:
            admin.get("/v1/jobs")
    assert caplog.records, "expected access log lines"
    written = "\n".join(JsonFormatter().format(record) for record in caplog.records)  # the lines as the service writes them
    assert '"path": "/v1/tasks"' in written
    assert CLIENT_KEY not in written and ADMIN_TOKEN not in written
