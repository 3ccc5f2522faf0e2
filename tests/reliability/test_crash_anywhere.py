"""Crash anywhere: a teacher, a trainer and a student (real processes on one Postgres) are SIGKILLed
at random moments, each twice or more, while a job samples and then a distillation trains; each is
started again at once, as an orchestrator would. Afterwards the job and the run have finished (or
failed with a reason), the accepted pairs equal the accepted chains, nothing is stored twice, and
the active student is the one that was active before: a crash neither promotes nor demotes, and a
restarted student serves the active student again.

The moments come from a seeded generator (DSC_CHAOS_SEED; the seed is printed) so a failure can be
replayed."""

from __future__ import annotations

import os
import random
import signal
import time

from sqlalchemy import func, select

from adapters import PHRASE
from live_server import wait_for
from shared.db.models import ChainRecord, DistillationRun, Job, Pair, Student
from shared.db.session import make_engine, session_factory, upgrade

PROMPTS = 10
FINAL = ("succeeded", "failed", "cancelled")


def _serves_active_student(student) -> bool:
    with student.client(timeout=120) as client:
        answer = client.post("/v1/chat/completions", json={"model": "student", "messages": [{"role": "user", "content": "Say hello."}],
                                                             "max_tokens": 12, "temperature": 0})
    # The adapter learned PHRASE on a few steps: greedy decoding starts with it, then may wander.
    return answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"].startswith(PHRASE.split()[0])


def test_services_killed_at_random_points_lose_nothing(services, postgres_url, model_path, trained_adapter, add_student):
    seed = int(os.environ.get("DSC_CHAOS_SEED", "20261202"))
    rng = random.Random(seed)
    upgrade(postgres_url)
    db = make_engine(postgres_url)
    sessions = session_factory(db)
    active_id = add_student(sessions, 1, base_model=model_path, adapter_path=trained_adapter, promoted=True)
    launcher = services(postgres_url, job_batch_size=2, job_poll_seconds=0.2, job_lease_seconds=3, trainer_lease_seconds=3,
                        trainer_poll_seconds=0.2, trainer_max_attempts=6, distill_min_pairs=2, student_base_model=str(model_path),
                        student_poll_seconds=0.5)
    starts = {"teacher": lambda n: launcher.start("teacher", "serve", name=f"teacher-{n}"),
              "student": lambda n: launcher.start("student", "serve", name=f"student-{n}"),
              "trainer": lambda n: launcher.start("trainer", "work", "--threads", "1", name=f"trainer-{n}", serve=False)}
    running = {name: start(0) for name, start in starts.items()}
    kills = {name: 0 for name in starts}
    for name in ("teacher", "student"):
        launcher.wait_ready(running[name])
    assert _serves_active_student(running["student"])

    def crash(name: str) -> None:
        """SIGKILL `name` after a random pause, start it again, wait until it serves."""
        time.sleep(rng.uniform(0.5, 4.0))
        os.kill(running[name].pid, signal.SIGKILL)
        running[name].process.wait(30)
        kills[name] += 1
        running[name] = starts[name](kills[name])
        if running[name].url:
            launcher.wait_ready(running[name])

    def status(model, row_id: str) -> str | None:
        with sessions() as session:
            row = session.get(model, row_id)
            return row.status if row.status in FINAL else None

    try:
        with running["teacher"].client() as client:
            prompts = [f"Write a harsh review of film number {i}." for i in range(PROMPTS)]
            response = client.post("/v1/jobs", json={"task": "sentiment", "prompts": prompts, "acceptance": "always", "max_tokens": 8, "seed": 5})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
        for name in rng.sample(["teacher", "teacher", "student", "trainer"], 4):  # while the job samples
            crash(name)
        job_status = wait_for(lambda: status(Job, job_id), 600, "the job to finish", interval=0.5)

        with running["teacher"].client(token=launcher.env["DSC_ADMIN_TOKEN"]) as admin:
            response = admin.post("/admin/distillations", json={
                "task": "sentiment", "jobs": [job_id], "min_reward": -1.0, "max_steps": 6, "save_steps": 2, "batch_size": 2, "max_seq_len": 48,
                "eval_prompts": ["Review the film Heat."], "eval_max_tokens": 4, "eval_samples": 1, "collapse_check": False})
            assert response.status_code == 202, response.text
            run_id = response.json()["id"]
        wait_for(lambda: status(DistillationRun, run_id) or _step(sessions, run_id) >= 1, 300, "training to start", interval=0.2)
        for name in rng.sample(["trainer", "trainer", "teacher", "student"], 4):  # while the run trains
            crash(name)
        run_status = wait_for(lambda: status(DistillationRun, run_id), 900, "the run to finish", interval=0.5)
        assert wait_for(lambda: _serves_active_student(running["student"]), 120, "the restarted student to serve the active student")

        with sessions() as session:
            twice = session.execute(select(ChainRecord.prompt_index, ChainRecord.chain_index).where(ChainRecord.job_id == job_id)
                                    .group_by(ChainRecord.prompt_index, ChainRecord.chain_index).having(func.count() > 1)).all()
            chains = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id))
            accepted = session.scalar(select(func.count()).select_from(ChainRecord).where(ChainRecord.job_id == job_id, ChainRecord.accepted))
            pairs = session.scalar(select(func.count()).select_from(Pair).where(Pair.job_id == job_id))
            job = session.get(Job, job_id)
            run = session.get(DistillationRun, run_id)
            active = session.scalars(select(Student.id).where(Student.task_name == "sentiment", Student.active)).all()
            registered = session.scalars(select(Student.id).where(Student.run_id == run_id)).all()
    finally:
        db.dispose()

    print(f"\ncrash anywhere (seed {seed}): kills {kills}; job {job_status} after {job.done}/{job.total} prompts, "
          f"{chains} chains, {pairs} pairs; run {run_status} at attempt {run.attempt}, "
          f"resumed from step {(run.metrics.get('train') or {}).get('resumed_from_step')}")
    assert job_status == "succeeded", job.error
    assert twice == [] and chains == PROMPTS and pairs == accepted == job.accepted
    assert run_status == "succeeded", run.error
    assert run.progress["step"] == 6 and len(registered) == 1  # one student registered for the run, not one per attempt
    assert active == [active_id]  # crashes never change the active student
    assert sum(kills.values()) == 8 and min(kills.values()) >= 2


def _step(sessions, run_id: str) -> int:
    with sessions() as session:
        return (session.get(DistillationRun, run_id).progress or {}).get("step", 0)
