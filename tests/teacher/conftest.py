"""Fixtures of the teacher tests: the shared real transformers engine (SmolLM2), real uvicorn
servers on free loopback ports, real SQLite and Postgres databases, real bearer tokens."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from live_server import free_port, live_server, wait_for  # tests/ is on sys.path (pytest prepends the root conftest's directory)
from settings_support import TEST_AUTH_FAILURES, settings_with
from shared.db.models import ChainRecord, ChainStep, Job, Pair, Task
from shared.db.session import make_engine, session_factory
from shared.settings import Settings

CLIENT_KEY = "teacher-test-client-key"
ADMIN_TOKEN = "teacher-test-admin-token"
MAX_TOKENS = 8  # short answers: two CPU cores shared with other work


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the shared engine while these tests run: on a 2-core machine busy
    with other work, torch's default (one thread per core) spin-waits and generation was 4-15x
    slower than with one thread. Per test, so no other suite inherits it. DSC_TEST_TORCH_THREADS overrides."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DSC_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def teacher_settings(data_dir: Path, model_store: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir, model_store=model_store, database_url=database_url, engine="transformers",
        api_keys=[CLIENT_KEY], admin_token=ADMIN_TOKEN, auth_failure_limit=TEST_AUTH_FAILURES,
        max_body_bytes=64 * 1024,
        jobs={"workers": 1, "batch_size": 2, "poll_seconds": 0.1, "lease_seconds": 30, "max_failures": 2},
        teacher={"max_sync_prompts": 4, "max_job_prompts": 200, "max_tokens_limit": 64, "max_steps": 2, "max_chains": 2,
                 "max_prompt_chars": 500, "max_queued_jobs": 20, "max_concurrent_sync": 2},
    )
    return settings_with(values, overrides)


@dataclass
class Teacher:
    """A running teacher: its URL, clients with each kind of token, and its database."""

    url: str
    app: Any
    settings: Settings
    sessions: sessionmaker[Session]
    client_key: str = CLIENT_KEY
    admin_token: str = ADMIN_TOKEN

    def client(self, token: str | None = CLIENT_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300)

    @property
    def state(self):
        return self.app.state.teacher

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("succeeded",), timeout: float = 240) -> dict:
        with self.client() as client:
            return wait_job(client, job_id, statuses, timeout)

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            return {model.__tablename__: session.scalar(select(func.count()).select_from(model)) for model in (Job, ChainRecord, ChainStep, Pair, Task)}


@contextmanager
def running_teacher(settings: Settings, engine, *, ready_timeout: float = 120.0) -> Iterator[Teacher]:
    """create_app(settings, engine=...) under uvicorn on a free 127.0.0.1 port in a background
    thread; yields once /readyz answers 200, stops the server (and its workers) after."""
    from services.teacher.app import create_app

    app = create_app(settings, engine=engine)
    with live_server(app, name="teacher", ready_timeout=ready_timeout) as url:
        db_engine = make_engine(settings.resolved_database_url)
        try:
            yield Teacher(url=url, app=app, settings=settings, sessions=session_factory(db_engine))
        finally:
            db_engine.dispose()


def wait_job(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    def poll():
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(poll, timeout, f"job {job_id} to reach {statuses}", interval=0.2)


@pytest.fixture()
def make_teacher(request, tmp_path: Path, model_store: Path):
    """Factory: start a teacher over `database_url` (default: a fresh SQLite file) with overrides,
    on the session's transformers engine unless `engine` hands it another (e.g. vllm_engine)."""
    stack: list = []

    def start(database_url: str | None = None, *, engine=None, **overrides: Any) -> Teacher:
        url = database_url or f"sqlite:///{tmp_path / f'teacher-{len(stack)}.db'}"
        engine = engine if engine is not None else request.getfixturevalue("tf_engine")
        context = running_teacher(teacher_settings(tmp_path / "data", model_store, url, **overrides), engine)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture()
def waiter() -> Callable[..., Any]:
    """wait_for(predicate, timeout, what): poll until truthy (tests cannot import conftest)."""
    return wait_for


@pytest.fixture()
def teacher_db_url(db_url: str) -> str:
    """SQLite and Postgres in turn (the shared db_url fixture)."""
    return db_url


@pytest.fixture()
def make_state(tmp_path: Path, model_store: Path):
    """Factory: a TeacherState over a migrated database, for driving job workers directly (no
    HTTP). Disposes the database engines after the test."""
    from prometheus_client import CollectorRegistry

    from services.teacher.metrics import TeacherMetrics
    from services.teacher.state import TeacherState
    from shared.db.session import upgrade
    from shared.sampling_run import RewardPool

    engines = []

    def build(database_url: str, engine=None, **overrides: Any) -> TeacherState:
        settings = teacher_settings(tmp_path / "data", model_store, database_url, **overrides)
        upgrade(database_url)
        db_engine = make_engine(database_url)
        engines.append(db_engine)
        registry = CollectorRegistry()
        state = TeacherState(settings=settings, db_engine=db_engine, sessions=session_factory(db_engine), registry=registry, metrics=TeacherMetrics(registry))
        if engine is not None:
            state.engine, state.rewards = engine, RewardPool(judge_engine=engine)
        return state

    yield build
    for db_engine in engines:
        db_engine.dispose()


@pytest.fixture()
def unused_port() -> Callable[[], int]:
    """A function returning a free 127.0.0.1 port."""
    return free_port
