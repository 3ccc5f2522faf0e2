"""On SQLite, requests that only read do not take the write lock (issue 15): a listing answers
while another process holds the lock, where before it waited out the 30 s busy timeout and failed."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import func, select

from shared.db.models import Task
from shared.db.session import make_engine, read_session_factory, session_factory, transaction, upgrade


def _hold_write_lock(path: str) -> sqlite3.Connection:
    """What a busy writer (a job commit, a migration) looks like to everyone else."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def _task(name: str) -> Task:
    return Task(name=name, critique_request="c", revision_request="r", reward={"type": "length"})


def _in_thread(call, timeout: float):
    """Run `call`; return its result, or raise if it has not returned within `timeout` (blocked on a lock)."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the read waited for the writer's lock"
    return box["value"]


def test_read_session_reads_while_a_writer_holds_the_lock(tmp_path):
    path = tmp_path / "dsc.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    readers = read_session_factory(engine)
    with transaction(session_factory(engine)) as session:  # the first connection also puts the file in WAL mode
        session.add(_task("committed-before-the-lock"))
    holder = _hold_write_lock(str(path))
    try:
        def count_tasks() -> int:
            with readers() as session:
                return session.scalar(select(func.count()).select_from(Task))

        assert _in_thread(count_tasks, timeout=10) == 1
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()


def test_read_session_refuses_to_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'dsc.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with read_session_factory(engine)() as session:
            session.add(_task("written-by-a-reader"))
            with pytest.raises(RuntimeError, match="only reads"):
                session.flush()
        with transaction(read_session_factory(engine)) as session:
            assert session.scalar(select(func.count()).select_from(Task).where(Task.name == "written-by-a-reader")) == 0
    finally:
        engine.dispose()


def test_teacher_listings_answer_while_the_database_is_write_locked(make_teacher):
    teacher = make_teacher()
    path = teacher.settings.resolved_database_url.split("///", 1)[1]
    with teacher.client() as client:
        assert client.post("/v1/jobs", json={"task": "sentiment", "prompts": ["A short film review."], "max_tokens": 8}).status_code == 202
        holder = _hold_write_lock(path)
        try:
            jobs = _in_thread(lambda: client.get("/v1/jobs"), timeout=10)
            tasks = _in_thread(lambda: client.get("/v1/tasks"), timeout=10)
        finally:
            holder.rollback()
            holder.close()
    assert jobs.status_code == 200 and len(jobs.json()["data"]) == 1
    assert tasks.status_code == 200 and tasks.json()["data"]
