"""Fixtures of the student service tests: one transformers runtime for the whole session (the
real SmolLM2), real uvicorn servers on free loopback ports, a real SQLite registry, and a real
LoRA adapter trained for a few steps on a fixed phrase."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from live_server import live_server  # tests/ is on sys.path (pytest prepends the root conftest's directory)
from settings_support import TEST_AUTH_FAILURES, settings_with
from shared.db.models import Student
from shared.db.session import make_engine, session_factory, transaction, upgrade
from shared.settings import Settings

CLIENT_KEY = "test-client-key"
ADMIN_TOKEN = "test-admin-token"
from adapters import PHRASE  # what the shared test adapter (trained_adapter) learned to answer


@pytest.fixture(scope="session")
def student_runtime(model_path: Path):
    """The base model behind a micro-batcher, shared by every server of the session (loading
    the model per test would dominate the run on two cores)."""
    from services.student.runtimes.transformers_runtime import TransformersRuntime

    runtime = TransformersRuntime(model_path, max_batch=16, window_s=0.05, max_model_len=2048)
    yield runtime
    runtime._executor.shutdown(wait=False, cancel_futures=True)


def student_settings(tmp_path: Path, model_store: Path, **overrides) -> Settings:
    values = dict(
        data_dir=tmp_path / "data", model_store=model_store, engine="transformers",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        api_keys=[CLIENT_KEY], admin_token=ADMIN_TOKEN, auth_failure_limit=TEST_AUTH_FAILURES,
        student={"poll_seconds": 0.5, "max_prompt_tokens": 256, "max_tokens": 64, "max_n": 4},
    )
    return settings_with(values, overrides)


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory, model_store: Path, student_runtime):
    """A student served from an empty (migrated) SQLite registry: it serves the base model."""
    from services.student.app import create_app

    tmp = tmp_path_factory.mktemp("student")
    settings = student_settings(tmp, model_store)
    upgrade(settings.resolved_database_url)
    app = create_app(settings, runtime=student_runtime)
    with live_server(app, name="student") as url:
        yield url, app


@pytest.fixture()
def openai_client(registry_server):
    from openai import OpenAI

    url, _app = registry_server
    with OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120) as client:
        yield client


def register_student(url: str, *, name: str, version: int, task: str, base_model: str, adapter_path: Path | None,
                     merged_path: Path | None = None, promote: bool = True) -> str:
    """Register a Student row and (optionally) promote it: one active student per task, as the
    teacher's promote does."""
    from sqlalchemy import update

    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            student = Student(name=name, version=version, task_name=task, base_model=base_model,
                              adapter_path=str(adapter_path) if adapter_path else None,
                              merged_path=str(merged_path) if merged_path else None, metrics={})
            session.add(student)
            session.flush()
            if promote:
                session.execute(update(Student).where(Student.task_name == task, Student.id != student.id).values(active=False))
                student.active = True
                student.promoted_at = datetime.now(timezone.utc)
            return student.id
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def keys() -> dict:
    return {"client": CLIENT_KEY, "admin": ADMIN_TOKEN, "phrase": PHRASE}


@pytest.fixture(scope="session")
def student_helpers():
    """The helpers above, for test modules (test directories are not packages here)."""
    return {"running_server": lambda app: live_server(app, name="student", stop_timeout=30), "student_settings": student_settings, "register_student": register_student}
