"""Bad input across the API, over real HTTP on SQLite and Postgres: malformed JSON, wrong types,
exceeded limits, unknown tasks and jobs. Each gets its documented 4xx JSON error (never a 500),
and nothing is written to the database."""

from __future__ import annotations

OK_PROMPT = ["Tell me about a film."]
BODY = {"task": "sentiment", "prompts": OK_PROMPT, "max_tokens": 8}
LONG = "x" * 501  # max_prompt_chars is 500 in these tests


def sync(**body):
    return ("POST", "/v1/critique-revise", {"task": "sentiment", "prompts": OK_PROMPT, "max_tokens": 8, **body})


def job(**body):
    return ("POST", "/v1/jobs", {"task": "sentiment", "prompts": OK_PROMPT, "max_tokens": 8, **body})


def chunked(size: int):
    """A body sent with Transfer-Encoding: chunked (no Content-Length to refuse it by)."""
    def chunks():
        yield b'{"task": "sentiment", "prompts": ["'
        for _ in range(size // 1024):
            yield b"y" * 1024
        yield b'"]}'
    return chunks


TASK = {"name": "custom-x", "critique_request": "Critique.", "revision_request": "Revise.", "reward": {"type": "vader"}}

# (id, (method, path, json body | raw bytes), status, error type, text the message must contain)
CASES = [
    ("sync-malformed-json", ("POST", "/v1/critique-revise", b'{"task": '), 400, "invalid_request_error", "malformed JSON"),
    ("sync-not-an-object", ("POST", "/v1/critique-revise", b"[1, 2]"), 422, "invalid_request_error", ""),
    ("sync-prompts-not-a-list", sync(prompts="hello"), 422, "invalid_request_error", "prompts"),
    ("sync-max-tokens-string", sync(max_tokens="many"), 422, "invalid_request_error", "max_tokens"),
    ("sync-unknown-field", sync(bogus=1), 422, "invalid_request_error", "bogus"),
    ("sync-bad-acceptance", sync(acceptance="greedy"), 422, "invalid_request_error", "acceptance"),
    ("sync-temperature-range", sync(temperature=5), 422, "invalid_request_error", "temperature"),
    ("sync-no-prompts", sync(prompts=[]), 400, "invalid_request_error", "prompt"),
    ("sync-blank-prompt", sync(prompts=["  "]), 400, "invalid_request_error", "prompt"),
    ("sync-unknown-task", sync(task="no-such-task"), 404, "not_found_error", "no-such-task"),
    ("sync-too-many-prompts", sync(prompts=["a"] * 5), 400, "limit_exceeded_error", "max_sync_prompts"),
    ("sync-task-set-over-cap", ("POST", "/v1/critique-revise", {"task": "sentiment"}), 400, "limit_exceeded_error", "max_sync_prompts"),
    ("sync-prompt-too-long", sync(prompts=[LONG]), 400, "limit_exceeded_error", "max_prompt_chars"),
    ("sync-max-tokens-limit", sync(max_tokens=65), 400, "limit_exceeded_error", "max_tokens_limit"),
    ("sync-steps-limit", sync(steps=3), 400, "limit_exceeded_error", "max_steps"),
    ("sync-chains-limit", sync(chains=3), 400, "limit_exceeded_error", "max_chains"),
    ("sync-body-too-large", sync(prompts=["y" * 70_000]), 413, "payload_too_large_error", "max_body_bytes"),
    ("sync-chunked-body-too-large", ("POST", "/v1/critique-revise", chunked(70_000)), 413, "payload_too_large_error", "max_body_bytes"),
    ("sync-lone-surrogate", ("POST", "/v1/critique-revise", b'{"task": "sentiment", "prompts": ["\\ud800 hi"], "max_tokens": 8}'), 422,
     "invalid_request_error", "surrogate"),
    ("sync-max-tokens-bool", sync(max_tokens=True), 422, "invalid_request_error", "max_tokens"),
    ("sync-beta-infinity", ("POST", "/v1/critique-revise", b'{"task": "sentiment", "prompts": ["hi"], "beta": Infinity}'), 422,
     "invalid_request_error", "finite"),
    ("sync-temperature-nan", ("POST", "/v1/critique-revise", b'{"task": "sentiment", "prompts": ["hi"], "temperature": NaN}'), 422,
     "invalid_request_error", "finite"),
    ("sync-seed-too-big", sync(seed=2**64), 422, "invalid_request_error", "seed"),
    ("sync-store-string", sync(store="yes"), 422, "invalid_request_error", "store"),
    # one rule for numbers: a JSON number, never a string or a boolean (3.0 is a whole number)
    ("sync-temperature-string", sync(temperature="0.5"), 422, "invalid_request_error", "temperature"),
    ("sync-top-p-bool", sync(top_p=True), 422, "invalid_request_error", "top_p"),
    ("sync-chains-string", sync(chains="2"), 422, "invalid_request_error", "chains"),
    ("task-beta-string", ("POST", "/v1/tasks", {**TASK, "beta": "2"}), 422, "invalid_request_error", "beta"),
    ("distill-rate-string", ("POST", "/admin/distillations", {"task": "sentiment", "learning_rate": "0.001"}), 422,
     "invalid_request_error", "learning_rate"),
    ("distill-steps-string", ("POST", "/admin/distillations", {"task": "sentiment", "max_steps": "2"}), 422,
     "invalid_request_error", "max_steps"),
    ("evaluation-samples-bool", ("POST", "/admin/evaluations", {"student_id": "x", "samples": True}), 422,
     "invalid_request_error", "samples"),
    ("job-malformed-json", ("POST", "/v1/jobs", b"{nope"), 400, "invalid_request_error", "malformed JSON"),
    ("job-wrong-type", job(chains="two"), 422, "invalid_request_error", "chains"),
    ("job-unknown-task", job(task="no-such-task"), 404, "not_found_error", "no-such-task"),
    ("job-too-many-prompts", job(prompts=["a"] * 201), 400, "limit_exceeded_error", "max_job_prompts"),
    ("job-prompt-too-long", job(prompts=["ok", LONG]), 400, "limit_exceeded_error", "max_prompt_chars"),
    ("job-store-false", job(store=False), 422, "invalid_request_error", "store"),
    ("job-lone-surrogate", ("POST", "/v1/jobs", b'{"task": "sentiment", "prompts": ["ok", "\\udfff"], "max_tokens": 8}'), 422,
     "invalid_request_error", "surrogate"),
    ("job-steps-limit", job(steps=9), 400, "limit_exceeded_error", "max_steps"),
    ("job-unknown", ("GET", "/v1/jobs/0123456789abcdef", None), 404, "not_found_error", "0123456789abcdef"),
    ("job-cancel-unknown", ("POST", "/v1/jobs/0123456789abcdef/cancel", None), 404, "not_found_error", "0123456789abcdef"),
    ("jobs-bad-status", ("GET", "/v1/jobs?status=weird", None), 422, "invalid_request_error", "status"),
    ("jobs-bad-limit", ("GET", "/v1/jobs?limit=0", None), 422, "invalid_request_error", "limit"),
    ("pairs-bad-cursor", ("GET", "/v1/pairs?cursor=abc", None), 422, "invalid_request_error", "cursor"),
    ("pairs-limit-too-big", ("GET", "/v1/pairs?limit=5000", None), 422, "invalid_request_error", "limit"),
    ("pairs-bad-gain", ("GET", "/v1/pairs?min_gain=lots", None), 422, "invalid_request_error", "min_gain"),
    ("export-bad-format", ("GET", "/v1/pairs/export?format=csv", None), 422, "invalid_request_error", "format"),
    ("task-unknown", ("GET", "/v1/tasks/no-such-task", None), 404, "not_found_error", "no-such-task"),
    ("task-malformed-json", ("POST", "/v1/tasks", b'{"name": "x",'), 400, "invalid_request_error", "malformed JSON"),
    ("task-missing-fields", ("POST", "/v1/tasks", {"name": "custom-x"}), 422, "invalid_request_error", "critique_request"),
    ("task-bad-name", ("POST", "/v1/tasks", {**TASK, "name": "Bad Name!"}), 422, "invalid_request_error", "name"),
    ("task-unknown-reward", ("POST", "/v1/tasks", {**TASK, "reward": {"type": "magic"}}), 400, "invalid_request_error", "magic"),
    ("task-reward-typo", ("POST", "/v1/tasks", {**TASK, "reward": {"type": "vader", "scale": 2}}), 400, "invalid_request_error", "scale"),
    ("task-reward-not-object", ("POST", "/v1/tasks", {**TASK, "reward": "vader"}), 422, "invalid_request_error", "reward"),
    ("task-classifier-missing-dir", ("POST", "/v1/tasks", {**TASK, "reward": {"type": "hf-classifier", "path": "/no/such/dir"}}), 400, "invalid_request_error", "/no/such/dir"),
    ("task-preset-name", ("POST", "/v1/tasks", {**TASK, "name": "sentiment"}), 409, "conflict_error", "sentiment"),
    ("task-prompt-too-long", ("POST", "/v1/tasks", {**TASK, "prompts": [LONG]}), 400, "limit_exceeded_error", "max_prompt_chars"),
    ("task-lone-surrogate", ("POST", "/v1/tasks", b'{"name": "custom-x", "critique_request": "Critique \\ud83d.", '
     b'"revision_request": "Revise.", "reward": {"type": "vader"}}'), 422, "invalid_request_error", "unicode"),
    ("task-steps-bool", ("POST", "/v1/tasks", {**TASK, "steps": True}), 422, "invalid_request_error", "steps"),
    ("task-builtin", ("POST", "/v1/tasks", {**TASK, "builtin": True}), 400, "invalid_request_error", "builtin"),
    ("unknown-route", ("GET", "/v1/nothing-here", None), 404, "not_found_error", ""),
    ("wrong-method", ("DELETE", "/v1/jobs", None), 405, "invalid_request_error", ""),
]


def test_bad_requests_get_documented_errors_and_write_nothing(make_teacher, teacher_db_url):
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0})
    before = teacher.counts()
    failures = []
    with teacher.client(teacher.admin_token) as client:
        for case_id, (method, path, body), status, error_type, needle in CASES:
            if isinstance(body, bytes) or callable(body):
                content = body() if callable(body) else body
                response = client.request(method, path, content=content, headers={"Content-Type": "application/json"})
            else:
                response = client.request(method, path, json=body)
            try:
                error = response.json()["error"]
            except (ValueError, KeyError):
                failures.append(f"{case_id}: {response.status_code} without a JSON error body: {response.text[:200]}")
                continue
            if response.status_code != status or error["type"] != error_type or needle not in error["message"]:
                failures.append(f"{case_id}: got {response.status_code} {error} (want {status} {error_type} mentioning {needle!r})")
    assert not failures, "\n".join(failures)
    assert teacher.counts() == before


def test_full_queue_answers_429_with_retry_after(make_teacher, teacher_db_url):
    teacher = make_teacher(teacher_db_url, jobs={"workers": 0},  # no worker: jobs stay queued
                           teacher={"max_queued_jobs": 2, "queue_full_retry_after_seconds": 7})
    with teacher.client() as client:
        for _ in range(2):
            response = client.post("/v1/jobs", json=BODY)
            assert response.status_code == 202 and response.json()["status"] == "queued"
        response = client.post("/v1/jobs", json=BODY)
        assert response.status_code == 429 and response.headers["Retry-After"] == "7"
        assert response.json()["error"]["type"] == "rate_limit_error" and "max_queued_jobs" in response.json()["error"]["message"]
        assert teacher.counts()["jobs"] == 2
        # Cancelling a queued job frees its place at once.
        queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        cancelled = client.post(f"/v1/jobs/{queued[0]['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert client.post("/v1/jobs", json=BODY).status_code == 202


def test_saturated_engine_answers_429_not_a_hang(make_teacher):
    teacher = make_teacher(jobs={"workers": 0}, teacher={"max_concurrent_sync": 1, "sync_retry_after_seconds": 3})
    slots = teacher.state.sync_slots
    assert slots.acquire(blocking=False)  # one synchronous call "in flight"
    try:
        with teacher.client() as client:
            response = client.post("/v1/critique-revise", json=BODY, timeout=10)
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
        assert "max_concurrent_sync" in response.json()["error"]["message"]
    finally:
        slots.release()
    assert teacher.counts()["jobs"] == 0
    with teacher.client() as client:
        metrics = client.get("/metrics").text
    assert "dsc_teacher_sync_rejected_total 1.0" in metrics


def test_the_demo_waits_out_a_busy_teacher_instead_of_failing(make_teacher):
    """dsc demo keeps two synchronous calls in flight for its teacher chains; against a teacher with one
    slot the second gets 429 and is sent again after Retry-After, and every prompt gets its chains."""
    from services.demo import Client, DemoConfig, _teacher_answers

    teacher = make_teacher(jobs={"workers": 0}, teacher={"max_concurrent_sync": 1, "sync_retry_after_seconds": 1, "max_sync_prompts": 8})
    prompts = [f"Tell me about a quiet afternoon number {i}." for i in range(16)]  # two calls of 8
    answers = _teacher_answers(Client(teacher.url, teacher.admin_token), DemoConfig(samples=2, max_tokens=8, acceptance="always"), prompts)
    assert len(answers) == 16 and all(len(chains) == 2 for chains in answers)
    assert all(isinstance(chain["text"], str) and isinstance(chain["reward"], float) for chains in answers for chain in chains)
    with teacher.client() as client:
        rejected = float(next(line.split()[-1] for line in client.get("/metrics").text.splitlines()
                              if line.startswith("dsc_teacher_sync_rejected_total ")))
    assert rejected >= 1  # the second call was turned away at least once, and still answered
    assert teacher.counts()["jobs"] == 0 and teacher.counts()["chains"] == 0  # store=False: nothing written


def test_not_ready_is_503_with_retry_after(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    state = teacher.state
    engine, state.engine = state.engine, None  # as while the model is still loading
    try:
        with teacher.client() as client:
            response = client.post("/v1/critique-revise", json=BODY)
            assert response.status_code == 503 and "Retry-After" in response.headers
            assert response.json()["error"]["type"] == "service_unavailable_error"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["Retry-After"] and ready.json()["checks"] == {"engine": False, "database": True}
    finally:
        state.engine = engine


def test_too_many_or_too_large_headers_are_431(make_teacher):
    """Header limits (max_header_count, max_header_bytes) on every route, /healthz included, in
    the JSON error shape, counted in /metrics; a request within them is served."""
    teacher = make_teacher(jobs={"workers": 0})
    many = [(f"x-filler-{i}", "1") for i in range(150)]
    large = [("x-filler", "y" * 1_000_000)]
    with teacher.client(teacher.admin_token) as client:
        for path in ("/healthz", "/v1/tasks"):
            for headers, limit in ((many, "max_header_count"), (large, "max_header_bytes")):
                response = client.get(path, headers=headers)
                assert response.status_code == 431, (path, limit, response.text[:200])
                assert response.json()["error"]["type"] == "headers_too_large_error" and limit in response.json()["error"]["message"]
                assert response.headers["x-request-id"]
        assert client.get("/v1/tasks", headers=[(f"x-filler-{i}", "1") for i in range(50)]).status_code == 200
        metrics = client.get("/metrics").text
    assert 'status="431"' in metrics


def test_a_student_that_cannot_sample_gets_a_clear_error_and_writes_nothing(make_teacher, model_path, tmp_path):
    """A later round names a registered student (docs/distillation.md, Rounds): one without weights
    is refused before anything runs; one whose adapter has gone from disk fails the call with a 502
    that names it (never a 500), and no job, chain or pair is stored."""
    from shared.db.models import Student

    teacher = make_teacher(jobs={"workers": 0})
    with teacher.sessions() as session, session.begin():
        session.add_all([
            Student(id="no-weights", name="s", version=1, task_name="sentiment", base_model=str(model_path), metrics={}),
            Student(id="adapter-gone", name="s", version=2, task_name="sentiment", base_model=str(model_path), metrics={},
                    adapter_path=str(tmp_path / "deleted-adapter")),
        ])
    before = teacher.counts()
    with teacher.client() as client:
        empty = client.post("/v1/critique-revise", json={**BODY, "student": "no-weights"})
        assert empty.status_code == 400 and "neither an adapter nor merged weights" in empty.json()["error"]["message"]
        gone = client.post("/v1/critique-revise", json={**BODY, "student": "adapter-gone"})
        assert gone.status_code == 502, gone.text
        assert gone.json()["error"]["type"] == "engine_error"
        assert "the weights of student adapter-gone could not be prepared" in gone.json()["error"]["message"]
    assert teacher.counts() == before
    assert not (teacher.settings.resolved_model_store / "merged" / "adapter-gone").exists()  # nothing half-merged left
