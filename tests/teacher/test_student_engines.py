"""The teacher's engines of registered students (services/teacher/student_engines.py), shared by job
workers and synchronous calls: concurrent callers of one student share one engine built once, and
with `teacher.student_engines` = 1 a second student waits until the first one's engine is idle,
which is then closed to make room. Real SmolLM2 with a real LoRA adapter (tests/adapters.py), the
transformers engine, SQLite."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters import PHRASE
from services.teacher.student_engines import StudentEngines
from shared.db.models import Student
from shared.db.session import make_engine, session_factory, upgrade
from shared.engines.base import EngineClosed, SamplingParams
from shared.settings import Settings

ASK = [[{"role": "user", "content": "Say hello."}]]
GREEDY = SamplingParams(temperature=0, max_tokens=8)


def test_concurrent_callers_share_one_student_engine_and_the_bound_holds(tmp_path, model_store, model_path, trained_adapter):
    url = f"sqlite:///{tmp_path / 'teacher.db'}"
    upgrade(url)
    sessions = session_factory(make_engine(url))
    first, second = (f"round-{uuid.uuid4().hex[:12]}" for _ in range(2))  # merged/<id> lives in the session's model store
    with sessions() as session, session.begin():
        session.add_all([Student(id=sid, name=sid, version=1, task_name="sentiment", base_model=str(model_path),
                                 adapter_path=str(trained_adapter), metrics={}) for sid in (first, second)])
    settings = Settings(data_dir=tmp_path / "data", model_store=model_store, database_url=url, engine="transformers")
    assert settings.teacher.student_engines == 1
    engines = StudentEngines(settings, sessions, stopping=threading.Event())
    try:
        def ask(student_id: str):
            with engines.use(student_id) as engine:
                return engine, engine.generate(ASK, GREEDY)[0].text

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [first] * 4))
        assert len({id(engine) for engine, _ in answers}) == 1  # built once, shared by every caller
        assert all(text.startswith(PHRASE.split()[0]) for _, text in answers), answers  # the adapter's answer, not the base's
        assert engines.held() == [first]

        with ThreadPoolExecutor(1) as pool:
            with engines.use(first) as busy_engine:
                waiting = pool.submit(ask, second)
                time.sleep(2)
                assert not waiting.done() and engines.held() == [first]  # all engines busy: the second student waits
            # leaving the block makes the first engine idle: it is closed, the second student's is built
            engine, text = waiting.result(timeout=300)
        assert text.startswith(PHRASE.split()[0])
        assert engines.held() == [second] and engine is not busy_engine
        with pytest.raises(EngineClosed):
            busy_engine.generate(ASK, GREEDY)
    finally:
        engines.close()
    with pytest.raises(EngineClosed):
        engine.generate(ASK, GREEDY)
