"""On-demand evaluation end to end: POST /admin/evaluations → a trainer worker evaluates with the
real model → figures, and the student's promotion gate follows them. A student that *is* its base
(the same weights) must come out with a difference of exactly zero, not significant."""

from __future__ import annotations

import json

from services.trainer.evaluation_figures import collapse_check
from services.trainer.worker import TrainerWorker
from shared.db.models import Student


def test_on_demand_evaluation_of_a_student_identical_to_its_base(make_settings, tf_engine, model_path, helpers):
    settings = make_settings()
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        with teacher.sessions() as session, session.begin():
            session.add(Student(id="same-as-base", name="sentiment-student", version=1, task_name="sentiment",
                                base_model=str(model_path), merged_path=str(model_path), metrics={}))
        prompts = helpers.film_prompts  # 12 prompts: enough for the gate to judge significance
        created = admin.post("/admin/evaluations", json={"student_id": "same-as-base", "eval_prompts": prompts, "samples": 2,
                                                         "max_tokens": 12, "seed": 5})
        assert created.status_code == 202, created.text
        assert TrainerWorker(settings, teacher.sessions).run_once()
        evaluation = admin.get(f"/admin/evaluations/{created.json()['id']}").json()
        assert evaluation["status"] == "succeeded", evaluation["error"]
        figures = evaluation["metrics"]
        assert figures["prompts"] == 12 and figures["samples"] == 2 and len(figures["per_prompt"]) == 12
        gap = figures["student_minus_base"]
        assert gap["value"] == gap["low"] == gap["high"] == 0 and gap["significant"] is False
        assert figures["win_rate"]["value"] == 0.5 and figures["significant"] is False
        assert figures["systems"]["base"] == figures["systems"]["student"]
        assert figures["collapse"]["ppl_ratio"] == 1.0 and figures["collapse"]["collapsed"] is False
        assert figures["gate"] == {"promotable": False, "reason": "no significant gain over the base: student − base +0.000 "
                                                                  "[+0.000, +0.000] includes 0", "incumbent": None}
        second = figures["second_opinion"]  # the same weights: the second opinion sees no difference either
        assert second["scorer"] == "textblob" and second["systems"]["base"] == second["systems"]["student"]
        assert second["student_minus_base"]["value"] == 0 and second["student_minus_base"]["significant"] is False
        degeneration = figures["degeneration"]
        assert degeneration["degenerate"] is False and degeneration["distinct_ratio"] == 1.0 and degeneration["length_ratio"] == 1.0
        student = next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == "same-as-base")
        assert student["promotable"] is False and "includes 0" in student["gate"]
        assert student["metrics"]["latest_evaluation"]["id"] == evaluation["id"]
        assert [e["id"] for e in admin.get("/admin/evaluations", params={"student_id": "same-as-base"}).json()["data"]] == [evaluation["id"]]
        assert admin.post("/admin/students/same-as-base/promote").status_code == 409


def test_collapse_check_flags_a_student_that_says_one_thing_to_everything(tf_engine):
    prompts = ["Explain how a bicycle pump works.", "List three uses of baking soda.", "What does a compass show?",
               "How do plants drink water?"]
    from services.trainer.evaluation_figures import sample_answers
    from shared.engines.base import SamplingParams

    base = [group[0] for group in sample_answers(tf_engine, prompts, 1, SamplingParams(temperature=0, max_tokens=32))]
    same = collapse_check(tf_engine, prompts, base, base)
    assert same["ppl_ratio"] == 1.0 and not same["collapsed"]
    stuck = collapse_check(tf_engine, prompts, base, ["Wonderful wonderful wonderful film, truly a masterpiece!"] * 4)
    assert stuck["ppl_ratio"] > 2 and stuck["collapsed"]
    assert stuck["base_ppl_of_student_answers"] > stuck["base_ppl_of_base_answers"]


def test_only_an_evaluation_as_strict_as_the_runs_own_sets_the_gate(make_settings, tf_engine, model_path, helpers, db_url):
    """Training prompts are refused; another task, fewer answers a prompt or no collapse check leave
    the gate as it was (a report only); of two strict evaluations the last submitted sets it, even
    when the earlier one finishes after it."""
    from shared.db.models import DistillationRun, EvaluationRun
    from shared.distillation.pairs import Example
    from shared.distillation.registry import record_evaluation
    from shared.distillation.runs import SNAPSHOT_FILE, run_dir

    settings = make_settings(db_url)  # SQLite and Postgres (the student's row is locked while its gate is written)
    trained_on = helpers.film_prompts[:3]
    held_out = helpers.film_prompts[3:9]
    own_gate = {"promotable": True, "reason": "significant gain in its own evaluation (4 answers a prompt)"}
    snapshot = run_dir(settings, "run-of-the-student") / SNAPSHOT_FILE
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text("".join(json.dumps(Example(i, p, "A bright answer.").to_json()) + "\n" for i, p in enumerate(trained_on)))
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        with teacher.sessions() as session, session.begin():
            session.add(DistillationRun(id="run-of-the-student", task_name="sentiment", status="succeeded"))
            session.flush()
            session.add(Student(id="gated", name="sentiment-student", version=1, task_name="sentiment", base_model=str(model_path),
                                merged_path=str(model_path), run_id="run-of-the-student",
                                metrics={"eval": {"samples": 2}, "gate": own_gate}))
        worker = TrainerWorker(settings, teacher.sessions)
        body = {"student_id": "gated", "eval_prompts": held_out, "samples": 2, "max_tokens": 8, "seed": 3}

        def evaluate(**changes) -> dict:
            created = admin.post("/admin/evaluations", json={**body, **changes})
            assert created.status_code == 202, created.text
            assert worker.run_once()
            finished = admin.get(f"/admin/evaluations/{created.json()['id']}").json()
            assert finished["status"] == "succeeded", finished["error"]
            return finished

        def student() -> dict:
            return next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == "gated")

        refused = admin.post("/admin/evaluations", json={**body, "eval_prompts": held_out + trained_on[:1]})
        assert refused.status_code == 400 and "training data" in refused.json()["error"]["message"], refused.text
        assert admin.get("/admin/evaluations", params={"student_id": "gated"}).json()["data"] == []

        for changes, why in (({"collapse_check": False}, "collapse check was off"), ({"samples": 1}, "fewer than the 2"),
                             ({"task": "privacy"}, "not the student's 'sentiment'")):
            report = evaluate(**changes)
            latest = student()["metrics"]["latest_evaluation"]
            assert latest["id"] == report["id"] and latest["gating"] is False and why in latest["not_gating_because"], latest
            assert student()["promotable"] is True and student()["gate"] == own_gate["reason"]

        first = admin.post("/admin/evaluations", json=body).json()["id"]
        second = admin.post("/admin/evaluations", json={**body, "seed": 4}).json()["id"]
        assert worker.run_once() and worker.run_once()  # oldest first: the first finishes, then the second
        gated = student()
        assert gated["metrics"]["gate_from"]["evaluation_id"] == second and gated["metrics"]["latest_evaluation"]["gating"] is True
        assert gated["promotable"] is False and "+0.000 [+0.000, +0.000]" in gated["gate"]  # the same weights as its base: no gain
        with teacher.sessions() as session, session.begin():  # the first finishing after the second changes nothing
            earlier = session.get(EvaluationRun, first)
            record_evaluation(session, earlier, earlier.metrics)
        again = student()["metrics"]
        assert again["gate_from"]["evaluation_id"] == second
        assert again["latest_evaluation"]["id"] == first and "submitted later" in again["latest_evaluation"]["not_gating_because"]


def test_a_failed_evaluation_keeps_the_trained_student_registered_and_re_evaluable(make_settings, tf_engine, helpers):
    """Training succeeded, its evaluation could not run (the trainer's machine lacks the teacher's
    model that eval_teacher needs): the run succeeds, the student is registered but not promotable,
    and an evaluation on a trainer that has the model sets its gate."""
    settings = make_settings(distill={"min_pairs": 4})
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        helpers.store_fixed_pairs(teacher.sessions, helpers.film_prompts[:6], "A warm, lovely film.")
        created = admin.post("/admin/distillations", json={
            "task": "sentiment", "max_steps": 1, "batch_size": 2, "max_seq_len": 64, "eval_teacher": True,
            "max_eval_prompts": 2, "eval_samples": 2, "eval_max_tokens": 8, "collapse_check": False})
        assert created.status_code == 202, created.text
        without_teacher = settings.model_copy(update={"teacher_model": "/nonexistent/teacher-model"})
        assert TrainerWorker(without_teacher, teacher.sessions).run_once()

        run = admin.get(f"/admin/distillations/{created.json()['id']}").json()
        assert run["status"] == "succeeded" and run["error"] is None, run
        assert "/nonexistent/teacher-model" in run["metrics"]["eval"]["error"] and run["metrics"]["train"]["steps"] == 1
        student = next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == run["student_id"])
        assert student["promotable"] is False and student["gate"].startswith("its evaluation failed"), student["gate"]
        refused = admin.post(f"/admin/students/{student['id']}/promote")
        assert refused.status_code == 409 and "evaluate it again" in refused.json()["error"]["message"], refused.text

        again = admin.post("/admin/evaluations", json={"student_id": student["id"], "samples": 2, "max_tokens": 8, "max_eval_prompts": 2})
        assert again.status_code == 202, again.text
        assert TrainerWorker(settings, teacher.sessions).run_once()
        evaluation = admin.get(f"/admin/evaluations/{again.json()['id']}").json()
        assert evaluation["status"] == "succeeded", evaluation["error"]
        student = next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == run["student_id"])
        assert student["metrics"]["gate_from"]["evaluation_id"] == evaluation["id"]
        assert student["metrics"]["latest_evaluation"]["gating"] is True
        assert student["gate"] == evaluation["metrics"]["gate"]["reason"] and "failed" not in student["gate"]
