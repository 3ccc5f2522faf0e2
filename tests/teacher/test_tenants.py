"""Keys as tenants, over real HTTP against a real teacher (the bundled model, SQLite and Postgres):
a key sees, cancels and exports only its own jobs and pairs (another key's job is a 404, as if it
did not exist), the admin sees all; each key has a rate limit (429 with Retry-After); keys can be
configured as digests; reserved task names are refused; /readyz tells an open caller no internals."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import func, select, update

from shared.db.models import DistillationRun, Job, Task
from shared.keys import hash_key, key_id

KEY_A, KEY_B = "tenant-a-key", "tenant-b-key"
ONE_PROMPT = {"task": "sentiment", "max_tokens": 8, "acceptance": "always", "seed": 5}


def _sample(client, prompt: str) -> str:
    """A synchronous call that stores its chain (acceptance always: one pair per changed answer)."""
    response = client.post("/v1/critique-revise", json={**ONE_PROMPT, "prompts": [prompt]})
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def test_keys_see_only_their_own_jobs_and_pairs(make_teacher, teacher_db_url):
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0}, api_keys=[KEY_A, KEY_B])
    with teacher.client(KEY_A) as a, teacher.client(KEY_B) as b, teacher.client(teacher.admin_token) as admin:
        a_sync, b_sync = _sample(a, "Write a harsh review of a film about trains."), _sample(b, "Write a bitter review of a film about ships.")
        queued = a.post("/v1/jobs", json={**ONE_PROMPT, "prompts": ["Review a film."]})
        assert queued.status_code == 202, queued.text
        a_job = queued.json()["id"]  # no workers: it stays queued

        with teacher.sessions() as session:  # owners are key ids, never keys
            owners = dict(session.execute(select(Job.id, Job.owner)).all())
        assert owners == {a_sync: key_id(hash_key(KEY_A)), a_job: key_id(hash_key(KEY_A)), b_sync: key_id(hash_key(KEY_B))}

        assert {job["id"] for job in a.get("/v1/jobs").json()["data"]} == {a_sync, a_job}
        assert {job["id"] for job in b.get("/v1/jobs").json()["data"]} == {b_sync}
        assert {job["id"] for job in admin.get("/v1/jobs").json()["data"]} == {a_sync, a_job, b_sync}

        for response in (b.get(f"/v1/jobs/{a_job}"), b.post(f"/v1/jobs/{a_job}/cancel"), b.get(f"/v1/jobs/{a_sync}")):
            assert response.status_code == 404, response.text
            assert response.json()["error"] == {"type": "not_found_error", "message": f"no job {response.url.path.split('/')[3]!r}", "param": "id"}
        assert a.get(f"/v1/jobs/{a_job}").json()["status"] == "queued"  # B's cancel did nothing
        assert admin.get(f"/v1/jobs/{a_job}").status_code == 200

        a_pairs = {pair["job_id"] for pair in a.get("/v1/pairs").json()["data"]}
        b_pairs = {pair["job_id"] for pair in b.get("/v1/pairs").json()["data"]}
        all_pairs = {pair["job_id"] for pair in admin.get("/v1/pairs").json()["data"]}
        assert a_pairs == {a_sync} and b_pairs == {b_sync} and all_pairs == {a_sync, b_sync}, (a_pairs, b_pairs, all_pairs)
        assert b.get("/v1/pairs", params={"job": a_sync}).json()["data"] == []  # naming another key's job finds nothing

        def exported(client, **params) -> list[dict]:
            response = client.get("/v1/pairs/export", params=params)
            assert response.status_code == 200
            return [json.loads(line) for line in response.text.splitlines()]

        b_lines, admin_lines = exported(b), exported(admin)
        assert len(b_lines) == 1 and "ships" in b_lines[0]["messages"][0]["content"]
        assert len(admin_lines) == 2 and exported(b, job=a_sync) == []

        cancelled = a.post(f"/v1/jobs/{a_job}/cancel")  # its owner may
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_rate_limit_per_key(make_teacher):
    teacher = make_teacher(jobs={"workers": 0}, api_keys=[KEY_A, KEY_B], rate_limit="3/minute")
    with teacher.client(KEY_A) as a, teacher.client(KEY_B) as b:
        assert [a.get("/v1/tasks").status_code for _ in range(3)] == [200, 200, 200]
        refused = a.get("/v1/jobs")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["error"]["type"] == "rate_limit_error" and "DSC_RATE_LIMIT" in refused.json()["error"]["message"]
        assert b.get("/v1/tasks").status_code == 200  # another key is not held back
        assert teacher.client(None).get("/healthz").status_code == 200  # open routes are not limited


def test_keys_configured_as_digests(make_teacher):
    digest = "sha256:" + hashlib.sha256(KEY_A.encode()).hexdigest()
    admin_digest = "sha256:" + hashlib.sha256(b"digest-admin").hexdigest()
    teacher = make_teacher(jobs={"workers": 0}, api_keys=[digest], admin_token=admin_digest)
    assert KEY_A not in repr(teacher.settings)
    with teacher.client(KEY_A) as client, teacher.client("digest-admin") as admin:
        assert client.get("/v1/tasks").status_code == 200
        assert admin.get("/admin/students").status_code == 200
    with teacher.client(digest) as holder_of_the_digest:  # the digest itself is no key
        assert holder_of_the_digest.get("/v1/tasks").status_code == 401


@pytest.mark.parametrize("name", ["base", "default", "student"])
def test_reserved_task_names_are_refused(make_teacher, name):
    teacher = make_teacher(jobs={"workers": 0})
    with teacher.client(teacher.admin_token) as admin:
        response = admin.post("/v1/tasks", json={"name": name, "critique_request": "c", "revision_request": "r", "reward": {"type": "vader"}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "name" and "reserved" in error["message"]
    with teacher.sessions() as session:
        assert session.scalars(select(Task)).all() == []


def test_readyz_tells_an_open_caller_no_internals(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    state = teacher.state
    engine, state.engine = state.engine, None  # as after a failed load
    state.engine_error = "engine failed to load: no such file /srv/secret-models/teacher at http://10.0.0.7:9000/v1"
    try:
        with teacher.client(None) as anonymous, teacher.client() as client, teacher.client(teacher.admin_token) as admin:
            open_body = anonymous.get("/readyz")
            assert open_body.status_code == 503 and open_body.json() == {
                "ready": False, "checks": {"engine": False, "database": True}, "reason": "engine_failed"}
            refused = client.post("/v1/critique-revise", json={**ONE_PROMPT, "prompts": ["Hi."]})
            assert refused.status_code == 503 and "/srv" not in refused.text and "10.0.0.7" not in refused.text
            assert "secret-models" in admin.get("/readyz").json()["engine_error"]  # the admin may see the detail
            assert "engine_error" not in client.get("/readyz").json()  # a client key may not
    finally:
        state.engine, state.engine_error = engine, None


def test_a_small_job_is_not_starved_by_another_keys_big_one(make_teacher, teacher_db_url, waiter):
    """Fair share: one worker, key A's job of 20 batches queued first, key B's job of one batch after
    it. Workers take owners in turn (the one served longest ago first), so B's job finishes while
    A's has run a batch or two, not after all twenty of them."""
    teacher = make_teacher(teacher_db_url, jobs={"workers": 1, "batch_size": 1, "poll_seconds": 0.1}, api_keys=[KEY_A, KEY_B])
    quick = {"task": "sentiment", "max_tokens": 4, "acceptance": "always", "seed": 5, "chains": 1}
    with teacher.client(KEY_A) as a, teacher.client(KEY_B) as b:
        big = a.post("/v1/jobs", json={**quick, "prompts": [f"Review film number {i}." for i in range(20)]})
        assert big.status_code == 202, big.text
        waiter(lambda: a.get(f"/v1/jobs/{big.json()['id']}").json()["status"] == "running", 60, "A's job to start")
        small = b.post("/v1/jobs", json={**quick, "prompts": ["Review a film about a lighthouse."]})
        assert small.status_code == 202, small.text
        waiter(lambda: b.get(f"/v1/jobs/{small.json()['id']}").json()["status"] == "succeeded", 120, "B's job to finish")
        done = a.get(f"/v1/jobs/{big.json()['id']}").json()["progress"]["done"]
        assert done <= 3, f"B waited for {done} of A's batches"
        assert a.post(f"/v1/jobs/{big.json()['id']}/cancel").status_code in (200, 202)


def test_each_key_has_its_own_share_of_the_queue(make_teacher, teacher_db_url):
    """Per-key limits on unfinished jobs and on prompts still to sample: past either, that key's next
    job is a 429 with Retry-After and nothing is queued; other keys and the admin are unaffected."""
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0}, api_keys=[KEY_A, KEY_B],
                           teacher={"max_jobs_per_key": 2, "max_prompts_per_key": 5})
    job = {**ONE_PROMPT, "prompts": ["Review a film."]}
    with teacher.client(KEY_A) as a, teacher.client(KEY_B) as b, teacher.client(teacher.admin_token) as admin:
        assert [a.post("/v1/jobs", json=job).status_code for _ in range(2)] == [202, 202]
        refused = a.post("/v1/jobs", json=job)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "30", refused.text
        assert "2 unfinished jobs (max_jobs_per_key 2)" in refused.json()["error"]["message"]
        five = b.post("/v1/jobs", json={**job, "prompts": [f"Review film {i}." for i in range(5)]})
        assert five.status_code == 202, five.text  # A's share is not B's
        more = b.post("/v1/jobs", json=job)
        assert more.status_code == 429 and "max_prompts_per_key 5" in more.json()["error"]["message"], more.text
        assert admin.post("/v1/jobs", json=job).status_code == 202  # the admin token has no share
        metrics = a.get("/metrics").text  # each key's share, as the limits see it
        a_id, b_id = key_id(hash_key(KEY_A)), key_id(hash_key(KEY_B))
        for line in (f'dsc_teacher_key_jobs_unfinished{{key_id="{a_id}"}} 2.0', f'dsc_teacher_key_pending_prompts{{key_id="{b_id}"}} 5.0',
                     f'dsc_teacher_key_jobs_unfinished{{key_id="{key_id(hash_key(teacher.admin_token))}"}} 1.0',
                     "dsc_teacher_queue_pending_prompts 8.0"):
            assert line in metrics, line
    with teacher.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4  # the refused ones queued nothing


def test_a_distillation_trains_on_the_owners_it_names(make_teacher, teacher_db_url):
    """`owners` scopes a run's data to some tenants' pairs (key ids as jobs show them, 'none' for
    jobs of no key); without it a run takes every key's pairs, as the API docs say."""
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0}, api_keys=[KEY_A, KEY_B], distill={"min_pairs": 1})
    with teacher.client(KEY_A) as a, teacher.client(KEY_B) as b, teacher.client(teacher.admin_token) as admin:
        jobs = {"a": [_sample(a, "Describe a rainy Monday at the office."), _sample(a, "Describe a broken umbrella.")],
                "b": [_sample(b, "Describe a cold cup of coffee.")], "admin": [_sample(admin, "Describe a missed bus.")]}
        views = {job["id"]: job["owner"] for job in admin.get("/v1/jobs").json()["data"]}
        id_a, id_b, id_admin = (key_id(hash_key(key)) for key in (KEY_A, KEY_B, teacher.admin_token))
        assert views == {**{j: id_a for j in jobs["a"]}, **{j: id_b for j in jobs["b"]}, jobs["admin"][0]: id_admin}
        assert {job["owner"] for job in b.get("/v1/jobs").json()["data"]} == {id_b}

        pairs_of = {owner: sum(1 for pair in admin.get("/v1/pairs").json()["data"] if pair["job_id"] in ids)
                    for owner, ids in jobs.items()}
        assert all(count >= 1 for count in pairs_of.values()), pairs_of  # acceptance "always": each changed answer pairs
        keep_all = {"task": "sentiment", "best_per_prompt": False, "min_reward": -10, "max_repetition": None, "max_steps": 1}

        def selected(**scope) -> int:
            response = admin.post("/admin/distillations", json={**keep_all, **scope})
            assert response.status_code == 202, response.text
            return response.json()["progress"]["pairs"]

        assert selected(owners=[id_a]) == pairs_of["a"]
        assert selected(owners=[id_b, id_admin]) == pairs_of["b"] + pairs_of["admin"]
        assert selected() == sum(pairs_of.values())  # the default: every tenant's pairs
        assert selected(owners=[id_a], jobs=[jobs["a"][0], jobs["b"][0]]) < pairs_of["a"] + pairs_of["b"]

        with teacher.sessions() as session, session.begin():  # as a job from before owners were recorded, or of dsc sample
            session.execute(update(Job).where(Job.id == jobs["admin"][0]).values(owner=None))
        assert admin.get(f"/v1/jobs/{jobs['admin'][0]}").json()["owner"] == "none"
        assert selected(owners=["none"]) == pairs_of["admin"]

        nobody = admin.post("/admin/distillations", json={**keep_all, "owners": ["0123456789abcdef"]})
        assert nobody.status_code == 400 and "owners ['0123456789abcdef']" in nobody.json()["error"]["message"], nobody.text
        malformed = admin.post("/admin/distillations", json={**keep_all, "owners": [KEY_A]})  # a key, not a key id
        assert malformed.status_code == 422 and "owners" in malformed.json()["error"]["message"], malformed.text
        with teacher.sessions() as session:  # refused submissions left nothing behind
            assert session.scalar(select(func.count()).select_from(DistillationRun)) == 5
