"""The student's share of section 3, over real HTTP: a per-key rate limit that the official
`openai` client sees as a RateLimitError with Retry-After, and a /readyz that tells an open caller
why it is not ready without the paths behind it."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
import uvicorn

from live_server import free_port, live_server, wait_for
from shared.settings import Settings

CLIENT_KEY, ADMIN_TOKEN = "student-secrets-client", "student-secrets-admin"


def student_settings(tmp_path, model_store, **overrides) -> Settings:
    return Settings(**{"data_dir": tmp_path / "data", "model_store": model_store, "engine": "transformers",
                       "api_keys": [CLIENT_KEY], "admin_token": ADMIN_TOKEN, **overrides})


def test_rate_limit_per_key(tmp_path, model_store, model_path, student_runtime):
    from services.student.app import create_app

    settings = student_settings(tmp_path, model_store, api_keys=[CLIENT_KEY, "second-student-key"], rate_limit="2/minute")
    app = create_app(settings, runtime=student_runtime, use_registry=False, model=str(model_path))
    with live_server(app, name="student") as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            client.models.list()
            client.models.list()
            with pytest.raises(openai.RateLimitError) as info:
                client.models.list()
        assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60
        assert info.value.response.json()["error"]["type"] == "rate_limit_error"
        other = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer second-student-key"})
        assert other.status_code == 200  # its own window


def test_readyz_hides_the_load_error_from_open_callers(tmp_path, model_store):
    from services.student.app import create_app

    missing = tmp_path / "secret-models" / "student-x"
    app = create_app(student_settings(tmp_path, model_store), model=str(missing), use_registry=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        def failed():
            try:
                body = httpx.get(f"{url}/readyz", timeout=5).json()
            except httpx.HTTPError:
                return None
            return body if body.get("reason") == "model_failed" else None

        body = wait_for(failed, 120, "the student to report its failed load")
        assert "secret-models" not in str(body) and "error" not in body, body
        admin = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert "secret-models" in admin["error"]  # the admin may see the detail
        client = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {CLIENT_KEY}"}).json()
        assert "error" not in client
    finally:
        server.should_exit = True
        thread.join(60)
