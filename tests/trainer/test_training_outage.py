"""The database goes away mid-distillation (its own Postgres server, stopped for a few seconds and
started again): the trainer waits it out and the run finishes on its first attempt, from where it
was — no failure, no restart from zero — and the outage is logged a few times, not a traceback a poll."""

from __future__ import annotations

import logging
import time

import pytest

from own_postgres import available, own_postgres
from services.trainer.worker import TrainerWorker
from shared.db.models import DistillationRun
from shared.distillation.config import DistillationConfig
from shared.distillation.runs import submit

TINY = dict(task="sentiment", batch_size=2, max_seq_len=48, eval_max_tokens=6, eval_samples=1, collapse_check=False, learning_rate=5e-4)
OUTAGE_S = 5


def _progress(sessions, run_id: str) -> dict:
    with sessions() as session:
        return dict(session.get(DistillationRun, run_id).progress or {})


def test_training_waits_out_a_database_outage(make_settings, helpers, caplog):
    if not available():
        pytest.skip("needs Postgres's initdb and pg_ctl and runuser (Debian's postgresql package)")
    with own_postgres() as server:
        settings = make_settings(server.url, trainer={"lease_seconds": 120, "poll_seconds": 0.2, "threads": 1})
        sessions = helpers.migrated(settings)
        helpers.store_fixed_pairs(sessions, helpers.film_prompts[:8], "What a lovely, joyful film; I adored it.")
        run, _ = submit(sessions, settings, DistillationConfig(**TINY, max_steps=10, save_steps=5, eval_prompts=helpers.film_prompts[-1:]))

        worker = TrainerWorker(settings, sessions)
        caplog.set_level(logging.WARNING)
        worker.start()
        try:
            helpers.wait_for(lambda: _progress(sessions, run.id).get("step", 0) >= 2, 300, "training to reach step 2")
            server.stop()
            stopped_at = time.monotonic()
            time.sleep(OUTAGE_S)  # the trainer keeps training, its progress writes and cancel checks find no database
            server.start()
            helpers.wait_for(lambda: _progress(sessions, run.id).get("phase") not in ("training", "evaluating", "queued", None)
                             or sessions().get(DistillationRun, run.id).status in ("succeeded", "failed"), 600, "the run to end")
            helpers.wait_for(lambda: sessions().get(DistillationRun, run.id).status in ("succeeded", "failed"), 300, "the run to end")
        finally:
            worker.stop(120)
        with sessions() as session:
            done = session.get(DistillationRun, run.id)
        assert done.status == "succeeded", done.error
        assert done.attempt == 1 and done.metrics["train"]["resumed_from_step"] is None  # not restarted, not resumed
        assert [step for step, _ in done.metrics["train"]["loss_curve"]] == list(range(1, 11))
        outage_lines = [r for r in caplog.records if "database is unavailable" in r.getMessage() or "answers again" in r.getMessage()]
        assert outage_lines, "the outage was not logged"
        assert len(outage_lines) <= 6 and all(r.exc_info is None for r in outage_lines)
        assert time.monotonic() - stopped_at > OUTAGE_S
