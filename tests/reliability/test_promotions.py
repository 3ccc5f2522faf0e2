"""Promotions racing each other: many at once never leave a task with no active student or two;
two in quick succession under load are served without a failed request, and the student service
converges to the one promoted last; the registry shows which students are really served, and why
one that could not be loaded is not."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from live_server import stop_process, wait_for
from shared.db.models import Student, StudentReplica
from shared.db.session import make_engine, session_factory, upgrade
from shared.distillation.registry import promote, serving_state

ROUNDS, RACERS = 6, 8


def _active(sessions) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Student.id).where(Student.task_name == "sentiment", Student.active)))


def test_concurrent_promotions_leave_exactly_one_active_student(postgres_url, add_student):
    upgrade(postgres_url)
    db = make_engine(postgres_url)
    sessions = session_factory(db)
    try:
        ids = [add_student(sessions, version, base_model="some-base", adapter_path=f"/adapters/{version}") for version in range(1, 4)]
        for round_index in range(ROUNDS):
            start = threading.Barrier(RACERS)

            def race(i: int) -> str:
                start.wait()
                return promote(sessions, ids[(i + round_index) % len(ids)], force=True).id

            with ThreadPoolExecutor(RACERS) as pool:
                winners = list(pool.map(race, range(RACERS)))
            active = _active(sessions)
            assert len(active) == 1 and active[0] in winners, (round_index, active, winners)
    finally:
        db.dispose()


def test_two_promotions_in_quick_succession_under_load(services, postgres_url, model_path, trained_adapter, add_student):
    upgrade(postgres_url)
    db = make_engine(postgres_url)
    sessions = session_factory(db)
    v1 = add_student(sessions, 1, base_model=model_path, adapter_path=trained_adapter, promoted=True)
    launcher = services(postgres_url, student_poll_seconds=0.3, student_base_model=str(model_path))
    student = launcher.wait_ready(launcher.start("student", "serve", name="student"))
    chat = {"model": "student", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "temperature": 0}
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with student.client() as client:
            while not stop.is_set():
                answer = client.post("/v1/chat/completions", json=chat)
                outcomes.append((answer.status_code, answer.json().get("model", answer.text[:200])))

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(outcomes) >= 2, 120, "load on the student")
        v2 = add_student(sessions, 2, base_model=str(model_path), merged_path=str(model_path))
        v3 = add_student(sessions, 3, base_model=str(model_path), adapter_path=str(trained_adapter))
        promote(sessions, v2, force=True)
        time.sleep(0.2)  # quicker than the student's poll: it may never serve v2
        promote(sessions, v3, force=True)
        with student.client() as client:
            wait_for(lambda: client.get("/readyz").json().get("serving", {}).get("student") == "sentiment-student-v3", 180,
                     "the student to serve v3")
            served_at = len(outcomes)
            wait_for(lambda: len(outcomes) >= served_at + 4, 120, "more requests after the swap")
            models = client.get("/v1/models").json()["data"]
            active = _active(sessions)
            wait_for(lambda: _serving(sessions, v3)["served_by"], 60, "the registry to show v3 served")
            served = {sid: _serving(sessions, sid) for sid in (v1, v2, v3)}

            # A promotion whose adapter cannot be read: the task keeps v3, and both /readyz and the
            # registry say why the new one is not served.
            v4 = add_student(sessions, 4, base_model=str(model_path), adapter_path=str(trained_adapter.parent / "missing-adapter"))
            promote(sessions, v4, force=True)
            failed_state = wait_for(lambda: (state := _serving(sessions, v4))["load_errors"] and state, 60, "v4's load error in the registry")
            ready = client.get("/readyz").json()
        after_v4 = outcomes[-1]
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
        db.dispose()
    stop_process(student.process)  # a clean stop withdraws the replica's serving state
    db = make_engine(postgres_url)
    try:
        with session_factory(db)() as session:
            replicas_left = session.scalar(select(func.count()).select_from(StudentReplica))
    finally:
        db.dispose()
    assert replicas_left == 0
    failed = [outcome for outcome in outcomes if outcome[0] != 200]
    print(f"\ntwo promotions 0.2 s apart under load: {len(outcomes)} requests, {len(failed)} failed; "
          f"served {sorted({model for _, model in outcomes})}")
    assert failed == []
    assert {model for _, model in outcomes} <= {"sentiment-student-v1", "sentiment-student-v2", "sentiment-student-v3"}
    # (requests already running on v1 or v2 when v3 was published finish on the model they started on)
    assert [model for _, model in outcomes[-2:]] == ["sentiment-student-v3"] * 2
    assert active == [v3]
    assert [card["id"] for card in models if card["dsc_kind"] == "student"] == ["sentiment-student-v3"]  # v1 and v2 retired
    assert served[v3]["served_by"] and not served[v1]["served_by"] and not served[v2]["served_by"]
    assert failed_state["served_by"] == [] and "missing-adapter" in next(iter(failed_state["load_errors"].values()))
    assert ready["serving"]["student"] == "sentiment-student-v3" and ready["not_loaded"] == [v4]
    assert after_v4 == (200, "sentiment-student-v3")


def _serving(sessions, student_id: str) -> dict:
    with sessions() as session:
        return serving_state(session, [student_id])[student_id]
