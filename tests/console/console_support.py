"""Helpers of the console tests (a module, not conftest: test modules import it): a real teacher
(create_app on the shared transformers engine) under uvicorn, chains stored as the sampler stores them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
from sqlalchemy.orm import Session, sessionmaker

from live_server import console_cookie, teacher_server  # tests/ is on sys.path (pytest prepends the root conftest's directory)
from settings_support import TEST_AUTH_FAILURES, settings_with
from shared.db.models import Job, utcnow
from shared.db.session import transaction
from shared.db.store import record_chains
from shared.critique_revise import Chain as Trace, Step
from shared.settings import Settings

ADMIN_TOKEN = "console-test-admin-token"
CLIENT_KEY = "console-test-client-key"
XSS = "<script>document.title='pwned'</script>Review the film <b>Heat</b>."


def console_settings(tmp_path: Path, model_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data", model_store=tmp_path / "store", database_url=database_url, engine="transformers",
        teacher_model=str(model_path), student_base_model=str(model_path), api_keys=[CLIENT_KEY], admin_token=ADMIN_TOKEN, auth_failure_limit=TEST_AUTH_FAILURES,
        jobs={"workers": 0, "poll_seconds": 0.1}, distill={"min_pairs": 2}, teacher={"max_tokens_limit": 64},
    )
    return settings_with(values, overrides)


@dataclass
class Teacher:
    url: str
    settings: Settings
    sessions: sessionmaker[Session]

    def console(self, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> httpx.Client:
        """A client of the console, logged in with `token` (None: not logged in): its session cookie
        sent by hand (httpx keeps Secure cookies off plain HTTP), and this origin on every post, as a
        browser sends it."""
        headers = {"Origin": self.url, **({"Cookie": f"dsc_console={console_cookie(self.url, token)}"} if token else {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def api(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@contextmanager
def running_teacher(settings: Settings, engine) -> Iterator[Teacher]:
    with teacher_server(settings, engine) as (url, _app, sessions):
        yield Teacher(url=url, settings=settings, sessions=sessions)


def store_chains(sessions: sessionmaker[Session], prompts: list[str], *, job_id: str, task: str = "sentiment") -> str:
    """A finished job whose chains alternate accepted (a better revision) and refused."""
    traces = []
    for index, prompt in enumerate(prompts):
        accepted = index % 2 == 0
        revision = f"A warm, vivid answer {index}." if accepted else f"A flat answer {index}."
        traces.append(Trace(index, 0, prompt, f"meh {index}.", 0.1, [Step(f"too flat {index}", revision, 0.8 if accepted else 0.0, accepted)],
                            revision if accepted else f"meh {index}.", 0.8 if accepted else 0.1))
    with transaction(sessions) as session:
        now = utcnow()
        session.add(Job(id=job_id, kind="job", task_name=task, status="succeeded", prompts=prompts, total=len(prompts), done=len(prompts),
                        accepted=sum(t.accepted for t in traces), started_at=now, finished_at=now, params={"chains": 1}))
        session.flush()
        record_chains(session, job_id=job_id, task_name=task, acceptance="improve", traces=traces)
    return job_id
