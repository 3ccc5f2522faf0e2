"""Retries are safe: POST /v1/jobs takes an Idempotency-Key header (POST /admin/distillations too:
tests/trainer/test_admin_api.py); a retried request with the same key answers with what the first one made (never a second job or run),
the same key with another body is a 422 that queues nothing, keys are scoped to their caller, and
retries racing each other still make one row. Real HTTP, SQLite and Postgres."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from shared.db.models import Job

KEY, OTHER_KEY = "idempotency-client-a", "idempotency-client-b"
JOB = {"task": "sentiment", "prompts": ["Review a dull film.", "Review a long play."], "max_tokens": 4, "seed": 3}


def _count(teacher, model) -> int:
    with teacher.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_a_retried_job_submission_answers_with_the_first_job(make_teacher, teacher_db_url):
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0}, api_keys=[KEY, OTHER_KEY])
    with teacher.client(KEY) as client, teacher.client(OTHER_KEY) as other:
        first = client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "order-42"})
        assert first.status_code == 202, first.text
        assert "Idempotent-Replayed" not in first.headers
        again = client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "order-42"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true" and again.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
        assert _count(teacher, Job) == 1

        changed = client.post("/v1/jobs", json={**JOB, "seed": 4}, headers={"Idempotency-Key": "order-42"})
        assert changed.status_code == 422, changed.text
        error = changed.json()["error"]
        assert error["type"] == "idempotency_error" and "order-42" in error["message"] and error["param"] == "Idempotency-Key"
        assert _count(teacher, Job) == 1

        mine_elsewhere = other.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "order-42"})  # another caller's key space
        assert mine_elsewhere.status_code == 202 and mine_elsewhere.json()["id"] != first.json()["id"]
        assert client.post("/v1/jobs", json=JOB).json()["id"] != first.json()["id"]  # no key: every request queues
        assert _count(teacher, Job) == 3

        for bad in ("", "k" * 129):
            refused = client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": bad})
            assert refused.status_code in (400, 422) and "Idempotency-Key" in refused.text, refused.text
        assert _count(teacher, Job) == 3


def test_retries_racing_each_other_make_one_job(make_teacher, teacher_db_url):
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0})

    def post(_):
        with teacher.client() as client:
            return client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "racing"})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert {answer.status_code for answer in answers} == {202}, [answer.text for answer in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 5
    assert _count(teacher, Job) == 1
