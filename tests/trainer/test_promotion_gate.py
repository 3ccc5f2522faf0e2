"""The promotion gate's three comparisons, on the real model, real rewards and real databases.

A student that games VADER — trained to answer "Bleak and gruesome, haha, yay, thanks!" twice to
anything: VADER's laughter and thanks outweigh its two bleak words, TextBlob's adjectives do not —
raises the sentiment reward over its base, yet the second opinion (TextBlob) and the degeneration
check both flag it, and the gate refuses it. Made the task's active student, the same student then
stands as the incumbent that a challenger (the base model's own weights, or a student distilled to
say one flat sentence) is measured against: plain promotion and auto_promote refuse a challenger
significantly worse than it, force promotes it and keeps what it overrode and why.
"""

from __future__ import annotations

import pytest

from adapters import train_phrase_adapter
from live_server import console_cookie
from services.trainer.evaluation_figures import gate, is_collapsed
from services.trainer.evaluation_engines import run_evaluation
from services.trainer.worker import TrainerWorker
from shared.db.models import Student, utcnow
from shared.distillation.config import EvaluationConfig
from shared.distillation.registry import promote
from shared.errors import Conflict
from shared.tasks import preset_tasks

GAMES_VADER = "Bleak and gruesome, haha, yay, thanks! Bleak and gruesome, haha, yay, thanks!"


@pytest.fixture(scope="module")
def vader_gamer(tmp_path_factory, model_path):
    return train_phrase_adapter(model_path, tmp_path_factory.mktemp("gamer") / "adapter", phrase=GAMES_VADER, steps=12)


def test_a_student_that_games_the_reward_is_caught_by_the_second_opinion_and_the_degeneration_check(
        make_settings, model_path, vader_gamer, helpers):
    config = EvaluationConfig(task="sentiment", samples=2, max_tokens=32, seed=2, collapse_check=False)
    figures = run_evaluation(make_settings(), config, preset_tasks()["sentiment"], base_path=model_path, adapter_dir=vader_gamer,
                             prompts=helpers.film_prompts)

    assert any("gruesome" in example["student"] for example in figures["examples"]), figures["examples"]
    assert figures["student_minus_base"]["low"] > 0  # the reward rises, significantly ...
    second = figures["second_opinion"]
    assert second["scorer"] == "textblob" and second["student_minus_base"]["high"] < 0  # ... the second opinion falls, significantly
    degeneration = figures["degeneration"]
    assert degeneration["degenerate"] and degeneration["distinct_ratio"] < 0.5  # the same sentence to every prompt
    assert degeneration["repeated_3grams_minus_base"]["low"] > 0  # and more repetition within answers than the base
    verdict = figures["gate"]
    assert verdict["promotable"] is False
    assert "degenerate answers: says much the same to every prompt" in verdict["reason"] and "the second opinion (textblob) finds it worse" in verdict["reason"]


def test_a_challenger_worse_than_the_incumbent_is_refused_by_promotion_and_auto_promote_and_forced(
        make_settings, tf_engine, model_path, vader_gamer, helpers, db_url):
    settings = make_settings(db_url)  # SQLite and Postgres (promotion locks the task's rows there)
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        with teacher.sessions() as session, session.begin():
            session.add(Student(id="incumbent", name="sentiment-student", version=1, task_name="sentiment", base_model=str(model_path),
                                adapter_path=str(vader_gamer), metrics={}, active=True, promoted_at=utcnow()))
            session.add(Student(id="challenger", name="sentiment-student", version=2, task_name="sentiment", base_model=str(model_path),
                                merged_path=str(model_path), metrics={}))  # the base's own weights
        worker = TrainerWorker(settings, teacher.sessions)
        created = admin.post("/admin/evaluations", json={"student_id": "challenger", "eval_prompts": helpers.film_prompts,
                                                         "samples": 2, "max_tokens": 32, "seed": 2})  # strict: it sets the gate
        assert created.status_code == 202, created.text
        assert worker.run_once()
        evaluation = admin.get(f"/admin/evaluations/{created.json()['id']}").json()
        assert evaluation["status"] == "succeeded", evaluation["error"]
        figures = evaluation["metrics"]
        assert figures["incumbent"] == {"id": "incumbent", "model": "sentiment-student-v1"}
        assert figures["systems"]["incumbent"]["n"] == 12 and figures["student_minus_incumbent"]["high"] < 0
        assert "student_minus_incumbent" in figures["second_opinion"]

        listed = next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == "challenger")
        assert listed["comparisons"]["student_minus_incumbent"] == figures["student_minus_incumbent"]
        assert "significantly worse than sentiment-student-v1, the active student" in listed["gate"]
        refused = admin.post("/admin/students/challenger/promote")
        assert refused.status_code == 409 and "significantly worse than sentiment-student-v1" in refused.json()["error"]["message"]
        assert _active(teacher.sessions) == ["incumbent"]
        forced = admin.post("/admin/students/challenger/promote", params={"force": "true", "reason": "rolling back a reward hack"})
        assert forced.status_code == 200 and forced.json()["active"] is True
        promotion = forced.json()["promotion"]
        assert promotion["forced"] is True and promotion["reason"] == "rolling back a reward hack" and promotion["by"] == "admin"
        assert "significantly worse than sentiment-student-v1" in promotion["overrode"]
        console = admin.get("/console/students", headers={"Accept": "text/html",
                                                          "Cookie": f"dsc_console={console_cookie(teacher.url, helpers.admin_token)}"})
        assert console.status_code == 200 and "vs sentiment-student-v1" in console.text and "rolling back a reward hack" in console.text

        # auto_promote: the gamer active again, a new student distilled to say one flat sentence loses to it
        assert admin.post("/admin/students/incumbent/promote", params={"force": "true"}).status_code == 200
        job = helpers.store_fixed_pairs(teacher.sessions, preset_tasks()["sentiment"].prompts[:4], "The film is a film.")
        run = admin.post("/admin/distillations", json={
            "task": "sentiment", "jobs": [job], "eval_prompts": helpers.film_prompts, "max_steps": 2, "batch_size": 2,
            "max_seq_len": 64, "eval_max_tokens": 32, "eval_samples": 2, "collapse_check": False, "auto_promote": True,
            "min_reward": -1.0, "seed": 2})
        assert run.status_code == 202, run.text
        assert worker.run_once()
        finished = admin.get(f"/admin/distillations/{run.json()['id']}").json()
        assert finished["status"] == "succeeded", finished["error"]
        new = next(s for s in admin.get("/admin/students").json()["data"] if s["id"] == finished["student_id"])
        assert new["metrics"]["eval"]["incumbent"]["id"] == "incumbent" and new["metrics"]["eval"]["student_minus_incumbent"]["high"] < 0
        assert new["active"] is False and "significantly worse than" in new["metrics"]["auto_promote_refused"]
        assert _active(teacher.sessions) == ["incumbent"]


def test_promotion_needs_the_incumbent_the_student_was_measured_against(make_settings, model_path, helpers, db_url):
    """A gate measured against no active student (or another one) is stale once a student is active:
    promotion asks for a new evaluation, force overrides it."""
    sessions = helpers.migrated(make_settings(db_url))
    passing = {"promotable": True, "reason": "significant gain", "incumbent": None}
    with sessions() as session, session.begin():
        session.add(Student(id="v1", name="s", version=1, task_name="sentiment", base_model=str(model_path), metrics={"gate": passing}))
        session.add(Student(id="v2", name="s", version=2, task_name="sentiment", base_model=str(model_path), metrics={"gate": passing}))
    assert promote(sessions, "v1").metrics["promotion"]["forced"] is False  # nothing active: its gate holds
    with pytest.raises(Conflict, match="evaluated with no active student, but s-v1 is the active student now: evaluate it again"):
        promote(sessions, "v2")
    assert promote(sessions, "v2", force=True, reason="measured by hand").metrics["promotion"]["overrode"].startswith("it was evaluated")


def test_the_gate_holds_every_rule_on_its_own():
    """Each rule refuses alone; a student that passes them all is promotable."""
    interval = lambda low, high: {"value": (low + high) / 2, "low": low, "high": high}  # noqa: E731
    passing = {"prompts": 12, "student_minus_base": interval(0.1, 0.3), "incumbent": {"id": "a", "model": "s-v1"},
               "student_minus_incumbent": interval(-0.1, 0.2), "degeneration": {"degenerate": False, "reasons": []},
               "second_opinion": {"scorer": "textblob", "student_minus_base": interval(-0.1, 0.1), "student_minus_incumbent": interval(-0.1, 0.1)}}
    assert gate(passing)["promotable"] is True and "against s-v1" in gate(passing)["reason"]
    for change, reason in (
        ({"student_minus_base": interval(-0.1, 0.3)}, "no significant gain over the base"),
        ({"prompts": 9}, "too few to call a gain significant"),
        ({"student_minus_incumbent": interval(-0.3, -0.01)}, "significantly worse than s-v1, the active student"),
        ({"second_opinion": {**passing["second_opinion"], "student_minus_base": interval(-0.3, -0.01)}}, "finds it worse than the base"),
        ({"second_opinion": {**passing["second_opinion"], "student_minus_incumbent": interval(-0.3, -0.01)}}, "finds it worse than s-v1"),
        ({"degeneration": {"degenerate": True, "reasons": ["repeats itself"]}}, "degenerate answers: repeats itself"),
        ({"collapse": {"collapsed": True, "ppl_ratio": 3.1, "length_ratio": 0.9}}, "collapsed"),
        ({"incumbent": {"id": "a", "model": "s-v1", "error": "OSError: gone"}}, "could not be compared with s-v1"),
    ):
        verdict = gate({**passing, **change})
        assert verdict["promotable"] is False and reason in verdict["reason"], (change, verdict)


def test_the_collapse_limit_separates_the_measured_students():
    """The perplexity ratios measured in README's demo and docs/distillation.md: every SFT student (0.76-1.16, any
    task) is healthy; the reward-hacking DPO (1.73) and SFT→DPO (2.06) students are collapsed; and
    answers under half the base's length are collapsed whatever their perplexity."""
    assert not any(is_collapsed(ratio, 1.0) for ratio in (0.76, 0.81, 0.82, 0.86, 0.89, 0.93, 0.97, 0.99, 1.05, 1.16))
    assert all(is_collapsed(ratio, 1.0) for ratio in (1.73, 2.06))
    assert is_collapsed(1.0, 0.4) and not is_collapsed(1.0, 0.6)


def _active(sessions) -> list[str]:
    from sqlalchemy import select

    with sessions() as session:
        return list(session.scalars(select(Student.id).where(Student.task_name == "sentiment", Student.active.is_(True))))
