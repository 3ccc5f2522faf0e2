"""Distillation rounds for real: a job that names a registered student samples from that student
(the teacher runs its merged weights in an engine of its own), and a run over those pairs is the
next round, its student recording round and parent (GET /admin/students, the run's lineage).
`dsc distil --rounds` (services/rounds.py) then runs one more round through the same API.
"""

from __future__ import annotations

from sqlalchemy import select

from services.rounds import RoundsConfig, run_rounds
from services.trainer.worker import TrainerWorker
from shared.db.models import ChainRecord, Student
from shared.engines.base import SamplingParams
from shared.engines.transformers_engine import TransformersEngine

CHOSEN = "What a lovely, joyful film; I adored it."
TINY = dict(task="sentiment", batch_size=2, max_seq_len=48, learning_rate=5e-3, seed=3, eval_samples=1, eval_max_tokens=6,
            collapse_check=False)
GREEDY = dict(temperature=0, steps=1, max_tokens=16, acceptance="always")


def _wait_job(admin, job_id: str, helpers) -> dict:
    helpers.wait_for(lambda: admin.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed"), timeout=300, what=f"job {job_id} to end")
    job = admin.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    return job


def _students(admin) -> dict[str, dict]:
    return {s["id"]: s for s in admin.get("/admin/students", params={"task": "sentiment"}).json()["data"]}


def test_a_round_two_job_samples_from_the_round_one_student_and_the_lineage_is_stored(make_settings, helpers, teacher, tf_engine):
    settings = make_settings(jobs={"workers": 1})
    sessions = helpers.migrated(settings)
    train_prompts, asked, eval_prompt = helpers.film_prompts[:8], helpers.film_prompts[:3], helpers.film_prompts[-1]
    helpers.store_fixed_pairs(sessions, train_prompts, CHOSEN)
    trainer = TrainerWorker(settings, sessions)
    with teacher(settings) as t, t.admin() as admin:
        # Round 1: pairs the teacher's model sampled (here: fixed ones).
        first = admin.post("/admin/distillations", json={**TINY, "max_steps": 8, "eval_prompts": [eval_prompt]})
        assert first.status_code == 202, first.text
        assert first.json()["lineage"] == {"round": 1, "parent_id": None, "pairs": 8, "jobs": {"fixed-job": 8},
                                           "sampled_by": {"teacher": 8}}
        assert trainer.run_once()
        round_one = admin.get(f"/admin/distillations/{first.json()['id']}").json()
        assert round_one["status"] == "succeeded", round_one["error"]
        parent = round_one["student_id"]

        unknown = admin.post("/v1/jobs", json={"task": "sentiment", "prompts": asked, "student": "no-such-student"})
        assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "no student 'no-such-student'"
        other_task = admin.post("/v1/jobs", json={"task": "safety", "prompts": asked, "student": parent})
        assert other_task.status_code == 400 and "was distilled for task 'sentiment', not 'safety'" in other_task.json()["error"]["message"]

        # Round 2: a job that names the round-1 student samples from it.
        created = admin.post("/v1/jobs", json={"task": "sentiment", "prompts": asked, "student": parent, **GREEDY})
        assert created.status_code == 202, created.text
        job = _wait_job(admin, created.json()["id"], helpers)
        assert job["params"]["student"] == parent and job["progress"]["accepted"] == 3
        with sessions() as session:
            drafts = session.scalars(select(ChainRecord.initial_text).where(ChainRecord.job_id == job["id"])
                                     .order_by(ChainRecord.prompt_index)).all()
        conversations = [[{"role": "user", "content": prompt}] for prompt in asked]
        params = SamplingParams(temperature=0, max_tokens=16)
        student_engine = TransformersEngine(settings.resolved_model_store / "merged" / parent, dtype=settings.dtype)
        try:
            student_answers = [g.text for g in student_engine.generate(conversations, params)]
        finally:
            student_engine.close()
        base_answers = [g.text for g in tf_engine.generate(conversations, params)]
        assert list(drafts) == student_answers  # the student's own greedy answers, from its merged weights
        assert student_answers != base_answers and any("lovely" in answer for answer in drafts)  # not the teacher's model

        second = admin.post("/admin/distillations", json={**TINY, "max_steps": 2, "jobs": [job["id"]], "eval_prompts": [eval_prompt]})
        assert second.status_code == 202, second.text
        assert second.json()["lineage"] == {"round": 2, "parent_id": parent, "pairs": 3, "jobs": {job["id"]: 3},
                                            "sampled_by": {parent: 3}}
        assert trainer.run_once()
        round_two = admin.get(f"/admin/distillations/{second.json()['id']}").json()
        assert round_two["status"] == "succeeded", round_two["error"]
        students = _students(admin)
        child = students[round_two["student_id"]]
        assert (child["round"], child["parent_id"]) == (2, parent)
        assert child["lineage"] == {"jobs": {job["id"]: 3}, "pairs": 3, "sampled_by": {parent: 3}}
        assert (students[parent]["round"], students[parent]["parent_id"]) == (1, None)
        with sessions() as session:
            stored = session.get(Student, child["id"])
            assert (stored.round, stored.parent_id) == (2, parent)

        # dsc distil --rounds: one more round from the round-2 student, promoted (forced: too small to judge).
        trainer.start()
        try:
            summaries = run_rounds(t.url, helpers.admin_token, RoundsConfig(
                task="sentiment", rounds=1, prompts=6, chains=1, max_tokens=16, temperature=0.8, acceptance="always",
                student=child["id"], force_promotion=True,
                distillation={**TINY, "max_steps": 2, "eval_prompts": [eval_prompt], "min_reward": -1, "max_repetition": 1}))
        finally:
            trainer.stop()
        [third] = summaries
        assert (third["round"], third["parent_id"], third["promoted"]) == (3, child["id"], True)
        students = _students(admin)
        assert students[third["student_id"]]["active"] and students[third["student_id"]]["round"] == 3
        assert admin.get(f"/v1/jobs/{third['job_id']}").json()["params"]["student"] == child["id"]
        # teacher.student_engines is 1: the round-1 student's idle engine was closed to make room for the round-2 one
        assert t.app.state.teacher.student_engines.held() == [child["id"]]
