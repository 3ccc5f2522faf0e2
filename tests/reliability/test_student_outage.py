"""The student's database (the registry, a Postgres of the test's own) goes away while the student
serves its active student: every request is still answered by that student, readiness stays 200
(it serves from what is loaded), the outage is logged once, not every poll; once the database is
back, a promotion made there is picked up."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters import PHRASE
from own_postgres import available, own_postgres
from shared.db.session import make_engine, session_factory, upgrade

OUTAGE_SECONDS = 8  # several registry polls (student_poll_seconds=0.5)


def test_student_serves_its_loaded_student_through_a_registry_outage(services, model_path, trained_adapter, add_student):
    if not available():
        pytest.skip("needs Postgres's initdb and pg_ctl and runuser (Debian's postgresql package)")
    with own_postgres() as server:
        upgrade(server.url)
        db = make_engine(server.url)  # its pool reconnects once the server is back (pre-ping)
        sessions = session_factory(db)
        add_student(sessions, 1, base_model=model_path, adapter_path=trained_adapter, promoted=True)
        launcher = services(server.url, student_poll_seconds=0.5, student_base_model=str(model_path))
        student = launcher.wait_ready(launcher.start("student", "serve", name="student"))
        chat = {"model": "student", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}

        with student.client() as client:
            def ask(_: int) -> tuple[int, str, str]:
                answer = client.post("/v1/chat/completions", json=chat)
                body = answer.json()
                return answer.status_code, body.get("model", ""), (body.get("choices") or [{}])[0].get("message", {}).get("content", "")

            assert ask(0)[1] == "sentiment-student-v1"
            server.stop()
            answers, started = [], time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                while time.monotonic() - started < OUTAGE_SECONDS:
                    answers += pool.map(ask, range(2))
            ready_during = client.get("/readyz")
            server.start()
            upgrade(server.url)  # nothing to do: the same database, back
            promoted = add_student(sessions, 2, base_model=model_path, merged_path=model_path, promoted=True)  # a merged one this time

            def serving_v2() -> bool:
                return client.get("/readyz").json().get("serving", {}).get("student") == "sentiment-student-v2"

            deadline = time.monotonic() + 120
            while not serving_v2() and time.monotonic() < deadline:
                time.sleep(0.5)
            after = ask(0)
        db.dispose()

    assert answers and all(status == 200 and model == "sentiment-student-v1" and text.startswith(PHRASE.split()[0])
                           for status, model, text in answers), answers[:3]
    assert ready_during.status_code == 200 and ready_during.json()["serving"]["student"] == "sentiment-student-v1"
    assert after[:2] == (200, "sentiment-student-v2"), (after, promoted)
    outage_lines = [line for line in student.log().splitlines() if "cannot read the student registry" in line]
    assert 1 <= len(outage_lines) <= 3, outage_lines  # once per distinct problem, not once per poll
    print(f"\nstudent through a {OUTAGE_SECONDS} s registry outage: {len(answers)} requests, 0 failed; "
          f"{len(outage_lines)} log line(s); promotion after it picked up")
