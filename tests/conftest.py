"""Shared fixtures: the real bundled model, real engines (one of each per session), real databases."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine as sa_create_engine, text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite samples 4-24 token answers to stay fast on two cores, so nearly every one is cut off at
# max_tokens; a deployment's default (drop them) would leave its runs nothing to train on. The
# default itself is tested in tests/trainer/test_admin_api.py and tests/unit/test_eval_separation.py.
os.environ.setdefault("DSC_DISTILL_TRUNCATED_ANSWERS", "keep")

from shared.db.session import make_engine, session_factory, upgrade  # noqa: E402
from shared.settings import BUNDLED_MODEL, Settings  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def model_store() -> Path:
    # The store `make` prepared (dsc models prepare): the GGUF conversion happens once, not per test run.
    return Settings().resolved_model_store


@pytest.fixture(scope="session")
def model_path(model_store: Path) -> Path:
    from shared.model_store import resolve_model

    return resolve_model(BUNDLED_MODEL, model_store)


@pytest.fixture()
def settings(tmp_path: Path, model_store: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_store=model_store, engine="transformers")


@pytest.fixture(scope="session")
def tf_engine(model_path: Path):
    from shared.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model_path)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_engine(model_path: Path):
    from shared.engines.vllm_engine import VLLMEngine
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    engine = VLLMEngine(model_path, enforce_eager=True, gpu_memory_utilization=0.15, kv_cache_gib=0.5, max_model_len=2048)
    yield engine
    engine.close()


@pytest.fixture(params=["transformers", "vllm"])
def any_engine(request):
    """Each engine that exists here, in turn."""
    return request.getfixturevalue("tf_engine" if request.param == "transformers" else "vllm_engine")


def _postgres_server_url() -> str:
    return os.environ.get("DSC_TEST_POSTGRES_URL", DEFAULT_PG)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    url = _postgres_server_url()
    engine = sa_create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Postgres at {url} is not reachable in CI: {exc}")
        pytest.skip(f"Postgres at {url} is not reachable: {exc}")
    finally:
        engine.dispose()
    return url


def _fresh_postgres_database(server_url: str) -> Iterator[str]:
    name = f"dsc_test_{uuid.uuid4().hex[:10]}"
    admin = sa_create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture()
def postgres_url(postgres_server: str) -> Iterator[str]:
    """An empty database of its own on the real Postgres server."""
    yield from _fresh_postgres_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path: Path) -> str:
    """An empty database, on SQLite and on Postgres in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dsc.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def db(db_url: str):
    """A migrated database and its session factory."""
    upgrade(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, model_path: Path) -> Path:
    """A real peft LoRA adapter on SmolLM2 that answers PHRASE to anything (tests/adapters.py)."""
    from adapters import train_phrase_adapter

    return train_phrase_adapter(model_path, tmp_path_factory.mktemp("adapter") / "pineapple-lora")
