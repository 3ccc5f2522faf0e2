"""Fixtures of the trainer tests: real SmolLM2 (the bundled model), pairs made by the real
sampler, real databases, the real teacher app under uvicorn, real trainer processes.

Training here is tiny on purpose (a few steps, short sequences): the machines have two CPU cores
shared with other work. Artifacts go to a per-test model store; the student base model is the
bundled model's directory, used in place.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from live_server import teacher_server, wait_for  # tests/ is on sys.path (pytest prepends the root conftest's directory)
from settings_support import TEST_AUTH_FAILURES, settings_with
from shared.db.models import Job, utcnow
from shared.db.session import make_engine, session_factory, transaction, upgrade
from shared.db.store import record_chains
from shared.critique_revise import Chain, Step
from shared.settings import Settings

ADMIN_TOKEN = "trainer-test-admin-token"
CLIENT_KEY = "trainer-test-client-key"
TRAIN_PROMPTS = 6  # sentiment prompts the sampler runs on (x2 chains)
EVAL_PROMPTS = 3  # further sentiment prompts, never trained on


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on two cores busy with other work, torch's default spin-waits and a
    training step was many times slower. Restored after each test. DSC_TEST_TORCH_THREADS overrides."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DSC_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def trainer_settings(tmp_path: Path, model_path: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data", model_store=tmp_path / "store", database_url=database_url, engine="transformers",
        teacher_model=str(model_path), student_base_model=str(model_path),
        api_keys=[CLIENT_KEY], admin_token=ADMIN_TOKEN, auth_failure_limit=TEST_AUTH_FAILURES, jobs={"workers": 0},
        trainer={"lease_seconds": 30, "poll_seconds": 0.2, "max_attempts": 3}, distill={"min_pairs": 2},
    )
    settings = settings_with(values, overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture()
def make_settings(tmp_path: Path, model_path: Path) -> Callable[..., Settings]:
    def build(database_url: str | None = None, **overrides: Any) -> Settings:
        return trainer_settings(tmp_path, model_path, database_url, **overrides)

    return build


@dataclass
class Teacher:
    url: str
    settings: Settings
    sessions: sessionmaker[Session]
    app: Any = None

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)


@contextmanager
def running_teacher(settings: Settings, engine) -> Iterator[Teacher]:
    """The teacher app (create_app with the shared engine) under uvicorn on a free loopback port."""
    with teacher_server(settings, engine) as (url, app, sessions):
        yield Teacher(url=url, settings=settings, sessions=sessions, app=app)


@pytest.fixture()
def teacher(tf_engine) -> Callable[[Settings], Any]:
    """`with teacher(settings) as t:` a running teacher over settings' database."""
    return lambda settings: running_teacher(settings, tf_engine)


def migrated(settings: Settings) -> sessionmaker[Session]:
    engine = make_engine(settings.resolved_database_url)
    upgrade(settings.resolved_database_url)
    return session_factory(engine)


# --- training data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampledPairs:
    traces: list[Chain]
    eval_prompts: list[str]
    seconds: float

    @property
    def accepted(self) -> int:
        return sum(trace.accepted for trace in self.traces)


@pytest.fixture(scope="session")
def sentiment_samples(tf_engine) -> SampledPairs:
    """Critique→revise chains from the real sampler on real sentiment prompts (SmolLM2, VADER):
    a few prompts, two chains each, short answers. Sampled again with another seed while fewer
    than 4 chains were accepted, so the distillation tests always have data."""
    import torch

    from shared.engines.base import SamplingParams
    from shared.rewards import build_reward
    from shared.critique_revise import Sampler
    from shared.tasks import preset_tasks

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DSC_TEST_TORCH_THREADS", "1")))
    try:
        task = preset_tasks()["sentiment"]
        sampler = Sampler(tf_engine, build_reward(task.reward), critique_request=task.critique_request, revision_request=task.revision_request)
        started, traces = time.monotonic(), []
        prompts = task.prompts[:TRAIN_PROMPTS]
        for round_index, seed in enumerate((1, 2, 3)):
            chains = sampler.run(prompts, chains=2, params=SamplingParams(temperature=0.8, max_tokens=24, seed=seed))
            for chain in chains:  # a further round adds further chains of the same prompts
                chain.chain_index += 2 * round_index
            traces += chains
            if sum(trace.accepted for trace in traces) >= 4:
                break
        return SampledPairs(traces, task.prompts[-EVAL_PROMPTS:], time.monotonic() - started)
    finally:
        torch.set_num_threads(before)


def store_samples(sessions: sessionmaker[Session], samples: SampledPairs, job_id: str = "sampled-job") -> str:
    """Record the sampled chains as one finished job, exactly as the teacher stores them."""
    with transaction(sessions) as session:
        now = utcnow()
        session.add(Job(id=job_id, kind="cli", task_name="sentiment", status="succeeded", prompts=[], total=len(samples.traces),
                        done=len(samples.traces), accepted=samples.accepted, started_at=now, finished_at=now))
        session.flush()
        record_chains(session, job_id=job_id, task_name="sentiment", acceptance="improve", traces=samples.traces)
    return job_id


def store_fixed_pairs(sessions: sessionmaker[Session], prompts: list[str], answer: str, *, job_id: str = "fixed-job",
                      task: str = "sentiment", truncated: bool = False) -> str:
    """Accepted pairs whose answer is always `answer` (a tiny, unmistakable training target), cut off
    at max_tokens where `truncated`."""
    traces = [Chain(i, 0, prompt, "meh.", 0.0, [Step("too flat", answer, 0.9, True, truncated)], answer, 0.9, final_truncated=truncated)
              for i, prompt in enumerate(prompts)]
    with transaction(sessions) as session:
        session.add(Job(id=job_id, kind="cli", task_name=task, status="succeeded", prompts=prompts, total=len(prompts), done=len(prompts)))
        session.flush()
        record_chains(session, job_id=job_id, task_name=task, acceptance="improve", traces=traces)
    return job_id


FILM_PROMPTS = [
    "Write a short review of the film Heat.", "What did you think of the movie Alien?", "Review the film Casablanca in two sentences.",
    "Give me your opinion of the movie Up.", "Describe the film Vertigo briefly.", "How was the movie Jaws?",
    "Tell me about the film Amelie.", "Summarise your view of the movie Gravity.", "Review Spirited Away.",
    "Rate the film Memento.", "What is your take on the movie Psycho?", "Review the film Arrival.",
]


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The helpers above, for test modules (test directories are not packages here)."""
    return SimpleNamespace(running_teacher=running_teacher, store_samples=store_samples, store_fixed_pairs=store_fixed_pairs,
                           wait_for=wait_for, migrated=migrated, film_prompts=FILM_PROMPTS, admin_token=ADMIN_TOKEN)
