"""Test plumbing for live services: an app under uvicorn on a free loopback port in a background
thread, and polling until something becomes true."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app, *, name: str = "server", ready_timeout: float = 120.0, stop_timeout: float = 60.0,
                port: int | None = None) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200; stops the server (running its lifespan shutdown) after."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           proxy_headers=False))  # as the services run (shared/web/proxies.py)
    thread = threading.Thread(target=server.run, name=f"{name}-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=thread.is_alive, timeout=ready_timeout, what=name)
        yield url
    finally:
        server.should_exit = True
        thread.join(stop_timeout)


@contextmanager
def teacher_server(settings, engine) -> Iterator[tuple[str, Any, Any]]:
    """The teacher app (create_app on an already loaded engine) under uvicorn: yields its URL, the
    app, and a session factory on its database (disposed after)."""
    from services.teacher.app import create_app
    from shared.db.session import make_engine, session_factory

    app = create_app(settings, engine=engine)
    with live_server(app, name="teacher") as url:
        db_engine = make_engine(settings.resolved_database_url)
        try:
            yield url, app, session_factory(db_engine)
        finally:
            db_engine.dispose()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy and return its value; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_ready(url: str, *, alive: Callable[[], bool], timeout: float, what: str,
               detail: Callable[[], str] = lambda: "", interval: float = 0.05) -> None:
    """Poll `url`/readyz until it answers 200. AssertionError (with `detail()` appended, e.g. the
    service's log) as soon as `alive()` turns false, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive():
            raise AssertionError(f"{what} exited before it was ready\n{detail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout:.0f} s\n{detail()}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM a service process; SIGKILL it if it is still there after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def console_cookie(url: str, token: str) -> str:
    """Log in to a teacher's console as a browser does: the session cookie's value (httpx keeps
    Secure cookies off plain HTTP, so it is read from Set-Cookie)."""
    response = httpx.post(f"{url}/console/login", data={"token": token}, headers={"Origin": url}, follow_redirects=False, timeout=60)
    assert response.status_code == 303, response.text
    return response.headers["set-cookie"].split(";", 1)[0].removeprefix("dsc_console=")
