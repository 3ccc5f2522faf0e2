"""Every teacher endpoint over real HTTP, with the real SmolLM2 engine, on SQLite and Postgres."""

from __future__ import annotations

import json
from time import monotonic, sleep

MAX_TOKENS = 4  # two shared CPU cores: the tests check plumbing, not prose
CUSTOM_TASK = {
    "name": "kind-reviews",
    "description": "Make film reviews kinder (custom task of the tests).",
    "critique_request": "Point out anything unkind in your answer.",
    "revision_request": "Rewrite your answer so it is kind. Reply with the rewritten answer only.",
    "reward": {"type": "vader"},
    "acceptance": "always",
    "steps": 1,
    "prompts": ["Review a boring film.", "Describe a dull play."],
    "eval_prompts": ["Tell me about a tedious opera.", "Review a slow novel."],
    "train_min_reward": 0.2,
}


def test_health_readiness_metrics_and_openapi(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    with teacher.client(None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"engine": True, "database": True}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        for name in ("dsc_http_requests_total", "dsc_teacher_queue_depth 0.0", 'dsc_teacher_jobs{status="queued"} 0.0', "dsc_teacher_acceptance_rate"):
            assert name in metrics.text, name
        schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/v1/tasks", "get"), ("/v1/tasks", "post"), ("/v1/tasks/{name}", "get"), ("/v1/critique-revise", "post"),
        ("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/pairs", "get"), ("/v1/pairs/export", "get"), ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the OpenAPI schema"
    assert "SampleRequest" in schema["components"]["schemas"] and "JobView" in schema["components"]["schemas"]


def test_tasks_list_show_create(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    with teacher.client() as client, teacher.client(teacher.admin_token) as admin:
        listed = {task["name"]: task for task in client.get("/v1/tasks").json()["data"]}
        assert {"sentiment", "safety", "privacy"} <= set(listed)
        assert listed["sentiment"]["builtin"] and listed["sentiment"]["prompt_count"] > 0 and "prompts" not in listed["sentiment"]
        sentiment = client.get("/v1/tasks/sentiment").json()
        assert sentiment["reward"] == {"type": "vader"} and len(sentiment["prompts"]) == listed["sentiment"]["prompt_count"]
        assert sentiment["second_opinion"] == {"type": "textblob"}

        created = admin.post("/v1/tasks", json=CUSTOM_TASK)
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "kind-reviews" and created.json()["builtin"] is False
        shown = client.get("/v1/tasks/kind-reviews").json()
        assert shown["prompts"] == CUSTOM_TASK["prompts"] and shown["acceptance"] == "always"
        assert shown["eval_prompts"] == CUSTOM_TASK["eval_prompts"] and shown["train_min_reward"] == 0.2
        assert shown["second_opinion"] is None
        judged = admin.post("/v1/tasks", json={**CUSTOM_TASK, "name": "judged", "second_opinion": {"type": "wordlist"}})
        assert judged.status_code == 201 and client.get("/v1/tasks/judged").json()["second_opinion"] == {"type": "wordlist"}
        wrong = admin.post("/v1/tasks", json={**CUSTOM_TASK, "name": "wrong", "second_opinion": {"type": "textblob", "x": 1}})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "second_opinion.x", wrong.text
        assert "second_opinion spec" in wrong.json()["error"]["message"]
        listed = {task["name"]: task for task in client.get("/v1/tasks").json()["data"]}
        assert listed["kind-reviews"]["prompt_count"] == 2 and not listed["kind-reviews"]["builtin"]
        assert listed["kind-reviews"]["second_opinion"] is None
        assert listed["kind-reviews"]["eval_prompt_count"] == 2 and listed["sentiment"]["eval_prompt_count"] >= 40
        leaky = admin.post("/v1/tasks", json={**CUSTOM_TASK, "name": "leaky", "eval_prompts": ["review a boring  film."]})
        assert leaky.status_code == 422 and "both prompts and eval_prompts" in leaky.json()["error"]["message"]
        again = admin.post("/v1/tasks", json=CUSTOM_TASK)
        assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"
    assert teacher.counts()["tasks"] == 2


def test_critique_revise_synchronous(make_teacher):
    teacher = make_teacher(jobs={"workers": 0})
    with teacher.client(teacher.admin_token) as admin:
        assert admin.post("/v1/tasks", json=CUSTOM_TASK).status_code == 201
    with teacher.client() as client:
        # The custom task's own prompt set, its acceptance default ("always"), stored.
        response = client.post("/v1/critique-revise", json={"task": "kind-reviews", "max_tokens": MAX_TOKENS, "seed": 7})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"]) == 2 and body["job_id"]
        for result, prompt in zip(body["results"], CUSTOM_TASK["prompts"]):
            assert result["prompt"] == prompt
            assert set(result) >= {"prompt", "initial", "steps", "final", "accepted"}
            assert set(result["initial"]) == {"text", "reward", "truncated"} and set(result["final"]) == {"text", "reward", "truncated"}
            assert len(result["steps"]) == 1 and set(result["steps"][0]) == {"critique", "revision", "reward", "accepted", "truncated"}
            final_is_revision = result["steps"][0]["accepted"] and result["final"]["text"] == result["steps"][0]["revision"]
            assert result["final"]["truncated"] is (result["steps"][0] if final_is_revision else result["initial"])["truncated"]
        accepted = sum(result["accepted"] for result in body["results"])
        counts = teacher.counts()
        assert (counts["jobs"], counts["chains"], counts["chain_steps"], counts["pairs"]) == (1, 2, 2, accepted)
        job = client.get(f"/v1/jobs/{body['job_id']}").json()
        assert (job["kind"], job["status"], job["progress"]) == ("sync", "succeeded", {"done": 2, "total": 2, "accepted": accepted})
        assert client.post(f"/v1/jobs/{body['job_id']}/cancel").status_code == 409  # finished: nothing to cancel

        # store=false: sampled and answered, nothing written.
        response = client.post("/v1/critique-revise", json={"task": "sentiment", "prompts": ["Review a bad film."], "max_tokens": MAX_TOKENS, "store": False})
        assert response.status_code == 200 and response.json()["job_id"] is None and len(response.json()["results"]) == 1
        assert teacher.counts() == counts
        metrics = client.get("/metrics").text
    assert 'dsc_teacher_chains_total{accepted="true",source="sync"}' in metrics
    tokens = [line for line in metrics.splitlines() if line.startswith('dsc_teacher_tokens_generated_total{source="sync"}')]
    assert tokens and float(tokens[0].split()[-1]) > 0


def _prompts(n: int, tag: str) -> list[str]:
    subjects = ("film", "play", "concert", "novel", "restaurant")
    return [f"Write a harsh review of {tag} {subjects[i % len(subjects)]} number {i}." for i in range(n)]


def test_job_lifecycle_progress_cancel_pairs_export(make_teacher, teacher_db_url):
    """The issue's 'done when': submit a job, watch it progress, finish it; submit a 100-prompt
    job, watch it, cancel it; list and export the accepted pairs, on SQLite and on Postgres."""
    teacher = make_teacher(teacher_db_url, jobs={"batch_size": 2}, teacher={"export_page_size": 3})  # the export in several pages
    with teacher.client() as client:
        small = client.post("/v1/jobs", json={"task": "sentiment", "prompts": _prompts(2, "a small"), "acceptance": "always", "max_tokens": MAX_TOKENS, "seed": 1})
        assert small.status_code == 202 and small.json()["status"] == "queued"
        assert small.headers["location"] == f"/v1/jobs/{small.json()['id']}"
        big = client.post("/v1/jobs", json={"task": "sentiment", "prompts": _prompts(100, "a big"), "acceptance": "always", "max_tokens": MAX_TOKENS, "seed": 2})
        assert big.status_code == 202
        small_id, big_id = small.json()["id"], big.json()["id"]

        seen = set()
        done = teacher.wait_job(small_id, ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        assert done["progress"]["done"] == done["progress"]["total"] == 2 and done["attempt"] == 1 and done["failures"] == 0
        assert done["params"]["acceptance"] == "always" and done["params"]["max_tokens"] == MAX_TOKENS

        def big_progress():
            job = client.get(f"/v1/jobs/{big_id}").json()
            seen.add((job["status"], job["progress"]["done"]))
            return job if job["progress"]["done"] >= 2 else None

        deadline = monotonic() + 240
        while big_progress() is None:
            assert monotonic() < deadline, "the 100-prompt job made no progress"
            sleep(0.2)
        cancel = client.post(f"/v1/jobs/{big_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["cancel_requested"] is True
        cancelled = teacher.wait_job(big_id, ("cancelled", "succeeded", "failed"))
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        assert 2 <= cancelled["progress"]["done"] < 100 and cancelled["progress"]["done"] % 2 == 0
        assert any(status == "running" for status, _ in seen)

        listed = client.get("/v1/jobs").json()["data"]
        assert [job["id"] for job in listed[:2]] == [big_id, small_id]  # newest first
        assert [job["id"] for job in client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]] == [big_id]

        # Pairs: accepted chains of both jobs, walked one per page through the cursor.
        expected = done["progress"]["accepted"] + cancelled["progress"]["accepted"]
        assert expected > 0, "acceptance 'always' should accept nearly every chain"
        walked, cursor = [], None
        while True:
            page = client.get("/v1/pairs", params={"limit": 2, **({"cursor": cursor} if cursor is not None else {})}).json()
            walked += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(walked) == expected and len({pair["id"] for pair in walked}) == expected
        assert [pair["id"] for pair in walked] == sorted(pair["id"] for pair in walked)
        keys = {(pair["job_id"], pair["prompt_index"], pair["chain_index"]) for pair in walked}
        assert len(keys) == expected
        assert len(client.get("/v1/pairs", params={"job": small_id}).json()["data"]) == done["progress"]["accepted"]
        assert client.get("/v1/pairs", params={"task": "safety"}).json()["data"] == []
        top_gain = max(pair["reward_gain"] for pair in walked)
        assert all(p["reward_gain"] >= top_gain for p in client.get("/v1/pairs", params={"min_gain": top_gain}).json()["data"])
        assert client.get("/v1/pairs", params={"min_gain": top_gain + 10}).json() == {"data": [], "next_cursor": None}

        with client.stream("GET", "/v1/pairs/export", params={"format": "jsonl"}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert len(lines) == expected
        by_prompt = {pair["prompt"]: pair for pair in walked}
        for record in lines:
            assert set(record) == {"messages", "task", "reward_before", "reward_after", "truncated", "excluded", "excluded_reason"}
            assert (record["excluded"], record["excluded_reason"]) == (False, None)  # none reviewed out (the console's review)
            user, assistant = record["messages"]
            assert (user["role"], assistant["role"], record["task"]) == ("user", "assistant", "sentiment")
            assert by_prompt[user["content"]]["response"] == assistant["content"]
            assert record["truncated"] is by_prompt[user["content"]]["truncated"] and isinstance(record["truncated"], bool)
        with client.stream("GET", "/v1/pairs/export", params={"job": small_id}) as response:
            assert sum(1 for line in response.iter_lines() if line) == done["progress"]["accepted"]

        metrics = client.get("/metrics").text
    assert 'dsc_teacher_jobs{status="succeeded"} 1.0' in metrics and 'dsc_teacher_jobs{status="cancelled"} 1.0' in metrics
    assert 'dsc_teacher_job_batches_total{outcome="committed"}' in metrics
    counts = teacher.counts()
    assert counts["pairs"] == expected and counts["chains"] == 2 + cancelled["progress"]["done"]
