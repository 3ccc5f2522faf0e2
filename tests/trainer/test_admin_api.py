"""The admin distillation and student API on SQLite and Postgres: bad input is a clear 4xx and
queues nothing; what only the student's model can tell (LoRA targets, max_seq_len) fails the run
on the trainer at once, with the same message; auth, not-found, cancel of a queued run, reports
that do not exist yet."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from services.trainer.worker import TrainerWorker
from shared.db.models import DistillationRun, Student

GOOD = {"task": "sentiment", "max_steps": 2, "batch_size": 2, "max_seq_len": 64}


def _runs(teacher) -> int:
    with teacher.sessions() as session:
        return session.scalar(select(func.count()).select_from(DistillationRun))


@pytest.fixture()
def api(make_settings, db_url, tf_engine, helpers):
    settings = make_settings(db_url, distill={"min_pairs": 4})
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film.", job_id="small-job")
        created = admin.post("/v1/tasks", json={"name": "tone", "critique_request": "Critique it.", "revision_request": "Fix it.",
                                                "reward": {"type": "vader"}})
        assert created.status_code == 201, created.text
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film.", job_id="tone-job", task="tone")
        yield teacher, admin


BAD = [  # (change to a good body, status, words the message must contain)
    ({"jobs": ["small-job"], "eval_prompts": ["Review Heat."], "min_reward_gain": 5.0}, 400, "too few pairs: 0 accepted pairs"),
    ({"jobs": ["no-such-job"]}, 400, "too few pairs"),
    ({"task": "no-such-task"}, 404, "unknown task"),
    ({"base_model": "no-such-model"}, 400, "unknown model 'no-such-model'"),
    ({"base_model": "/nonexistent/dir/model"}, 400, "base_model"),
    ({"lora_r": 128}, 400, "student_max_lora_rank"),
    ({"task": "tone", "held_out_fraction": 0}, 400, "task 'tone' has no evaluation set"),
    ({"batch_size": 0}, 422, "batch_size"),
    ({"learning_rate": -1}, 422, "learning_rate"),
    ({"epochs": 0}, 422, "epochs"),
    ({"lora_r": 1000}, 422, "lora_r"),
    ({"max_steps": 10**9}, 400, "distill_max_steps"),
    ({"eval_prompts": []}, 422, "eval_prompts"),
    ({"learn_rate": 0.1}, 422, "learn_rate"),
    ({"method": "qlora"}, 422, "method"),
    ({"seed": 2**31}, 422, "seed"),  # refused at submission, not after training (the evaluation's bound)
    ({"seed": -1}, 422, "seed"),
]


def test_bad_input_is_a_clear_4xx_and_queues_nothing(api):
    """One running teacher per database for all the cases (each would otherwise start its own)."""
    teacher, admin = api
    for change, status, words in BAD:
        response = admin.post("/admin/distillations", json={**GOOD, **change})
        assert response.status_code == status, (change, response.text)
        error = response.json()["error"]
        assert words in error["message"], (change, error)
        assert _runs(teacher) == 0, change


# The teacher never loads the student's model or tokenizer: these are checked by the trainer before it
# loads any weights, and the run fails with the message a 400 used to carry.
NEEDS_THE_MODEL = [
    ({"lora_target_modules": ["warp_drive_proj"]}, "lora_target_modules ['warp_drive_proj'] do not exist"),
    ({"max_seq_len": 9000}, "max_seq_len 9000 exceeds the base model's 8192 positions"),
    ({"max_seq_len": 16}, "too few training pairs: 0 of 5 matching pairs are left"),
]


def test_what_needs_the_model_fails_the_run_at_once_on_the_trainer(api):
    teacher, admin = api
    worker = TrainerWorker(teacher.settings, teacher.sessions)
    for change, words in NEEDS_THE_MODEL:
        created = admin.post("/admin/distillations", json={**GOOD, **change})
        assert created.status_code == 202, (change, created.text)
        assert worker.run_once()
        run = admin.get(f"/admin/distillations/{created.json()['id']}").json()
        assert run["status"] == "failed" and words in run["error"], (change, run)
        assert run["progress"]["phase"] == "failed" and run["progress"]["step"] == 0 and run["student_id"] is None, run
        assert not (teacher.settings.resolved_model_store / "students" / run["id"] / "checkpoints").exists()
    assert "max_seq_len=16" in run["error"] and "distill_min_pairs" in run["error"]
    with teacher.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Student)) == 0


def test_too_few_pairs_overall(make_settings, db_url, tf_engine, helpers):
    settings = make_settings(db_url, distill={"min_pairs": 8})
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film.")
        response = admin.post("/admin/distillations", json=GOOD)
        assert response.status_code == 400
        assert "too few pairs: 5 accepted pairs match (task 'sentiment')" in response.json()["error"]["message"]
        assert "distill_min_pairs" in response.json()["error"]["message"]
        assert _runs(teacher) == 0


def test_answers_cut_off_at_max_tokens_follow_the_deployments_default_unless_the_run_says(make_settings, db_url, tf_engine, helpers):
    """distill.truncated_answers = drop: a run that names nothing leaves cut-off answers out, so five
    of them are too few and the 400 says why; a run that says keep trains on them, one that says trim
    on those with a finished sentence, and the stored config records what applied."""
    settings = make_settings(db_url, distill={"min_pairs": 4, "truncated_answers": "drop"})
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film that ran out of", truncated=True)
        refused = admin.post("/admin/distillations", json=GOOD)
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert "too few training pairs: 0 of 5" in message and "cut off at the job's max_tokens" in message, message
        assert _runs(teacher) == 0
        kept = admin.post("/admin/distillations", json={**GOOD, "truncated_answers": "keep"})
        assert kept.status_code == 202, kept.text
        assert admin.get(f"/admin/distillations/{kept.json()['id']}").json()["config"]["truncated_answers"] == "keep"
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[5:10], "A warm, lovely film.", job_id="finished-job")
        dropped = admin.post("/admin/distillations", json=GOOD)
        assert dropped.status_code == 202, dropped.text
        run = admin.get(f"/admin/distillations/{dropped.json()['id']}").json()
        assert run["config"]["truncated_answers"] == "drop" and run["progress"]["pairs"] == 5, run
        # trim: a cut-off answer trains up to its last finished sentence; one without any stays out.
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film. It ran out",
                                  job_id="cut-after-a-sentence", truncated=True)
        trimmed = admin.post("/admin/distillations", json={**GOOD, "truncated_answers": "trim"})
        assert trimmed.status_code == 202, trimmed.text
        run = admin.get(f"/admin/distillations/{trimmed.json()['id']}").json()
        assert run["config"]["truncated_answers"] == "trim" and run["progress"]["pairs"] == 10, run


def test_a_tasks_recipe_defaults_fill_what_the_run_leaves_unset(api, helpers):
    """A task's `distillation` defaults (as the safety preset's objective dpo): a run that names a
    field keeps its own value, one that leaves it unset gets the task's, and the stored config says
    which applied; a preference default refuses auto_promote with the reason; a task cannot default
    a field outside the recipe, nor to a value a run could not take."""
    teacher, admin = api
    task = {"critique_request": "Critique it.", "revision_request": "Fix it.", "reward": {"type": "vader"}}
    for recipe, words in (({"lora_r": 4}, "lora_r cannot be a task's default"), ({"epochs": 0}, "epochs"),
                          ({"objective": "ppo"}, "objective")):
        refused = admin.post("/v1/tasks", json={**task, "name": "bad-recipe", "distillation": recipe})
        assert refused.status_code == 422 and words in refused.json()["error"]["message"], refused.text
    assert admin.get("/v1/tasks/bad-recipe").status_code == 404
    recipe = {"objective": "dpo", "epochs": 1, "learning_rate": 5e-4}
    created = admin.post("/v1/tasks", json={**task, "name": "recipe", "distillation": recipe})
    assert created.status_code == 201, created.text
    assert admin.get("/v1/tasks/recipe").json()["distillation"] == {"objective": "dpo", "epochs": 1.0, "learning_rate": 5e-4}
    assert next(t for t in admin.get("/v1/tasks").json()["data"] if t["name"] == "safety")["distillation"]["objective"] == "dpo"
    helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:5], "A warm, lovely film.", job_id="recipe-job", task="recipe")
    body = {"task": "recipe", "batch_size": 2, "max_seq_len": 64}

    refused = admin.post("/admin/distillations", json={**body, "auto_promote": True})
    assert refused.status_code == 400 and "task 'recipe''s default" in refused.json()["error"]["message"], refused.text
    assert _runs(teacher) == 0
    defaulted = admin.post("/admin/distillations", json=body)
    assert defaulted.status_code == 202, defaulted.text
    config = admin.get(f"/admin/distillations/{defaulted.json()['id']}").json()["config"]
    assert (config["objective"], config["epochs"], config["learning_rate"]) == ("dpo", 1.0, 5e-4), config
    named = admin.post("/admin/distillations", json={**body, "objective": "sft", "epochs": 2, "auto_promote": True})
    assert named.status_code == 202, named.text
    config = admin.get(f"/admin/distillations/{named.json()['id']}").json()["config"]
    assert (config["objective"], config["epochs"], config["learning_rate"], config["auto_promote"]) == ("sft", 2.0, 5e-4, True), config


def test_queue_list_cancel_and_auth(api):
    teacher, admin = api
    created = admin.post("/admin/distillations", json={**GOOD, "eval_prompts": ["Review the film Heat."]})
    assert created.status_code == 202, created.text
    run_id = created.json()["id"]
    listed = admin.get("/admin/distillations").json()["data"]
    assert [run["id"] for run in listed] == [run_id] and listed[0]["status"] == "queued"
    assert listed[0]["config"]["lora_r"] == 16 and listed[0]["progress"]["pairs"] == 5
    missing = admin.get(f"/admin/distillations/{run_id}/report.png")
    assert missing.status_code == 404 and "no report yet" in missing.json()["error"]["message"]

    cancelled = admin.post(f"/admin/distillations/{run_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert admin.post(f"/admin/distillations/{run_id}/cancel").json()["status"] == "cancelled"  # idempotent
    assert admin.get("/admin/distillations/nope").status_code == 404
    assert admin.post("/admin/distillations/nope/cancel").status_code == 404
    assert admin.post("/admin/students/nope/promote").status_code == 404
    assert admin.get("/admin/students").json() == {"data": []}

    with httpx.Client(base_url=teacher.url, timeout=30) as anonymous:
        assert anonymous.post("/admin/distillations", json=GOOD).status_code == 401
        assert anonymous.get("/admin/students", headers={"Authorization": "Bearer trainer-test-client-key"}).status_code == 403
    assert _runs(teacher) == 1


def test_evaluation_bad_input_is_a_clear_4xx_and_queues_nothing(api, model_path):
    from shared.db.models import EvaluationRun, Student

    teacher, admin = api
    with teacher.sessions() as session, session.begin():
        session.add(Student(id="s-1", name="tone-student", version=1, task_name="tone", base_model=str(model_path),
                            merged_path=str(model_path), metrics={}))
    cases = [
        ({}, 422, "student_id"),  # required by the schema
        ({"student_id": "nope"}, 404, "no student 'nope'"),
        ({"student_id": "s-1"}, 400, "task 'tone' has no evaluation set"),
        ({"student_id": "s-1", "task": "no-such-task"}, 404, "unknown task"),
        ({"student_id": "s-1", "samples": 0}, 422, "samples"),
        ({"student_id": "s-1", "eval_prompts": []}, 422, "eval_prompts"),
        ({"student_id": "s-1", "eval_prompts": ["  "]}, 422, "eval_prompts"),
        ({"student_id": "s-1", "temperature": 3}, 422, "temperature"),
        ({"student_id": "s-1", "sample": 4}, 422, "sample"),
    ]
    for body, status, words in cases:
        response = admin.post("/admin/evaluations", json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"]["message"], (body, response.json())
    with teacher.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EvaluationRun)) == 0
    assert admin.get("/admin/evaluations/nope").status_code == 404
    queued = admin.post("/admin/evaluations", json={"student_id": "s-1", "eval_prompts": ["Say something kind."]})
    assert queued.status_code == 202 and queued.json()["task"] == "tone"
    assert admin.post(f"/admin/evaluations/{queued.json()['id']}/cancel").json()["status"] == "cancelled"
    refused = admin.post("/admin/students/s-1/promote")
    assert refused.status_code == 409 and "no evaluation figures" in refused.json()["error"]["message"]
    with httpx.Client(base_url=teacher.url, timeout=30) as anonymous:
        assert anonymous.post("/admin/evaluations", json={"student_id": "s-1"}).status_code == 401


def test_a_retried_distillation_answers_with_the_first_run(api):
    """Idempotency-Key on POST /admin/distillations (jobs: tests/teacher/test_idempotency.py)."""
    teacher, admin = api
    first = admin.post("/admin/distillations", json=GOOD, headers={"Idempotency-Key": "nightly-1"})
    assert first.status_code == 202, first.text
    again = admin.post("/admin/distillations", json=GOOD, headers={"Idempotency-Key": "nightly-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    changed = admin.post("/admin/distillations", json={**GOOD, "max_steps": 3}, headers={"Idempotency-Key": "nightly-1"})
    assert changed.status_code == 422 and changed.json()["error"]["type"] == "idempotency_error", changed.text
    assert _runs(teacher) == 1
    assert admin.post("/admin/distillations", json=GOOD).json()["id"] != first.json()["id"]  # no key: a new run
    assert _runs(teacher) == 2
