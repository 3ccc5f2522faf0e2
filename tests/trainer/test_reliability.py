"""A trainer killed mid-run resumes from its checkpoint; a run that cannot finish ends `failed` with
the reason; neither touches the active student. Cancellation stops a run between steps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import psutil
from sqlalchemy import select, update

from services.trainer.worker import TrainerWorker
from shared.db.models import DistillationRun, Student, utcnow
from shared.distillation.config import DistillationConfig
from shared.distillation.runs import cancel, submit

TINY = dict(task="sentiment", batch_size=2, max_seq_len=48, eval_max_tokens=6, eval_samples=1, collapse_check=False, learning_rate=5e-4)


def _seed(helpers, settings, model_path: Path):
    sessions = helpers.migrated(settings)
    helpers.store_fixed_pairs(sessions, helpers.film_prompts[:8], "What a lovely, joyful film; I adored it.")
    with sessions() as session, session.begin():
        session.add(Student(id="active-one", name="sentiment-student", version=1, task_name="sentiment", base_model=str(model_path),
                            metrics={}, active=True, promoted_at=utcnow()))
    return sessions


def _run(sessions, run_id: str) -> DistillationRun:
    with sessions() as session:
        return session.get(DistillationRun, run_id)


def _untouched(sessions) -> None:
    with sessions() as session:
        active = list(session.scalars(select(Student.id).where(Student.active.is_(True))))
        assert active == ["active-one"]


def _trainer_process(settings, postgres_url: str, model_path: Path, log, *args: str) -> subprocess.Popen:
    """`dsc trainer work` in a process of its own (one torch thread, a 3 s lease), logging to `log`."""
    env = {**os.environ, "DSC_DATABASE_URL": postgres_url, "DSC_MODEL_STORE": str(settings.resolved_model_store),
           "DSC_DATA_DIR": str(settings.data_dir), "DSC_TRAINER_LEASE_SECONDS": "3", "DSC_TRAINER_POLL_SECONDS": "0.2",
           "DSC_STUDENT_BASE_MODEL": str(model_path), "DSC_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "services.cli", "trainer", "work", "--threads", "1", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def test_killed_trainer_resumes_from_its_checkpoint(make_settings, postgres_url, model_path, helpers, tmp_path):
    settings = make_settings(postgres_url, trainer={"lease_seconds": 3})
    sessions = _seed(helpers, settings, model_path)
    run, _ = submit(sessions, settings, DistillationConfig(**TINY, max_steps=8, save_steps=2, eval_prompts=helpers.film_prompts[-1:]))

    log = (tmp_path / "trainer.log").open("w")
    trainer = _trainer_process(settings, postgres_url, model_path, log)
    try:
        checkpoints = Path(run.artifact_dir) / "checkpoints"
        helpers.wait_for(lambda: trainer.poll() is None and any(checkpoints.glob("step-0000[0-9][0-9]")) and
                         _run(sessions, run.id).progress.get("step", 0) >= 3, 240, "a checkpoint and step 3")
        trainer.send_signal(signal.SIGKILL)  # no chance to clean up
        trainer.wait(30)
    finally:
        if trainer.poll() is None:
            trainer.kill()
        log.close()
    killed = _run(sessions, run.id)
    assert killed.status == "running" and killed.attempt == 1  # for now: the lease still names the dead worker
    killed_at = killed.progress["step"]
    assert 3 <= killed_at < 8

    # The lease expires; the next worker claims the run and resumes from the newest checkpoint.
    helpers.wait_for(lambda: _run(sessions, run.id).lease_expires_at < utcnow(), 20, "the dead worker's lease to expire")
    assert TrainerWorker(settings, sessions).run_once()
    done = _run(sessions, run.id)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2 and done.progress["step"] == 8
    resumed = done.metrics["train"]["resumed_from_step"]
    assert resumed is not None and 2 <= resumed <= killed_at and resumed % 2 == 0
    assert [step for step, _ in done.metrics["train"]["loss_curve"]] == list(range(1, 9))  # history survived the kill
    _untouched(sessions)  # a finished run registers a student; only promotion activates one
    with sessions() as session:
        assert session.scalar(select(Student.version).where(Student.run_id == run.id)) == 2


def test_a_killed_trainer_leaves_no_training_rank_behind(make_settings, postgres_url, model_path, helpers, tmp_path):
    """SIGKILL a trainer while two data-parallel ranks train: nobody can tell them to stop, so each
    rank must end by itself; the next attempt resumes the run from its checkpoint."""
    settings = make_settings(postgres_url, trainer={"lease_seconds": 3})
    sessions = _seed(helpers, settings, model_path)
    run, _ = submit(sessions, settings, DistillationConfig(**TINY, max_steps=8, save_steps=2, eval_prompts=helpers.film_prompts[-1:]))
    log = (tmp_path / "trainer.log").open("w")
    trainer = _trainer_process(settings, postgres_url, model_path, log, "--processes", "2")
    ranks: list[psutil.Process] = []
    try:
        checkpoints = Path(run.artifact_dir) / "checkpoints"
        helpers.wait_for(lambda: trainer.poll() is None and any(checkpoints.glob("step-0000[0-9][0-9]")) and
                         _run(sessions, run.id).progress.get("step", 0) >= 3, 300, "a checkpoint and step 3")
        ranks = [child for child in psutil.Process(trainer.pid).children(recursive=True) if "multiprocessing" in " ".join(child.cmdline())]
        assert len(ranks) >= 2, [child.cmdline() for child in psutil.Process(trainer.pid).children(recursive=True)]
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(30)
        _gone, alive = psutil.wait_procs(ranks, timeout=5)  # ended by the kernel, not at their next step
        assert not alive, f"training ranks outlived their trainer: {[p.pid for p in alive]}"
    finally:
        for process in [trainer, *ranks]:
            with contextlib.suppress(Exception):
                process.kill()
        log.close()
    helpers.wait_for(lambda: _run(sessions, run.id).lease_expires_at < utcnow(), 20, "the dead worker's lease to expire")
    assert TrainerWorker(settings, sessions).run_once()
    done = _run(sessions, run.id)
    assert done.status == "succeeded" and done.attempt == 2, done.error
    assert done.metrics["train"]["resumed_from_step"] is not None


def test_run_whose_workers_keep_dying_fails_with_the_reason(make_settings, model_path, helpers):
    settings = make_settings(trainer={"max_attempts": 2})
    sessions = _seed(helpers, settings, model_path)
    run, _ = submit(sessions, settings, DistillationConfig(**TINY, max_steps=2, eval_prompts=helpers.film_prompts[-1:]))
    # Two workers claimed it and died (their leases ran out without a heartbeat).
    with sessions() as session, session.begin():
        session.execute(update(DistillationRun).where(DistillationRun.id == run.id).values(
            status="running", attempt=2, lease_owner="dead-host:1:trainer", lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert TrainerWorker(settings, sessions).run_once()
    failed = _run(sessions, run.id)
    assert failed.status == "failed" and "gave up after 2 attempts" in failed.error and failed.finished_at is not None
    assert failed.lease_owner is None
    _untouched(sessions)
    with sessions() as session:
        assert session.scalar(select(Student.id).where(Student.run_id == run.id)) is None


def test_run_that_raises_fails_with_the_reason(make_settings, model_path, helpers, tmp_path):
    # A base model directory that loses its weights after the run was accepted.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in model_path.iterdir():
        (broken / item.name).symlink_to(item)
    settings = make_settings()
    sessions = _seed(helpers, settings, model_path)
    run, _ = submit(sessions, settings, DistillationConfig(**TINY, base_model=str(broken), max_steps=2, eval_prompts=helpers.film_prompts[-1:]))
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    assert TrainerWorker(settings, sessions).run_once()
    failed = _run(sessions, run.id)
    assert failed.status == "failed" and failed.error and failed.progress["phase"] == "failed"
    assert "safetensors" in failed.error or "weights" in failed.error.lower() or "no file" in failed.error.lower(), failed.error
    _untouched(sessions)


def test_cancel_stops_a_running_run(make_settings, model_path, helpers):
    settings = make_settings()
    sessions = _seed(helpers, settings, model_path)
    run, _ = submit(sessions, settings, DistillationConfig(**TINY, max_steps=200, eval_prompts=helpers.film_prompts[-1:]))
    worker = TrainerWorker(settings, sessions)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        helpers.wait_for(lambda: _run(sessions, run.id).progress.get("step", 0) >= 1, 180, "the first training step")
        assert cancel(sessions, run.id).cancel_requested  # what POST /admin/distillations/{id}/cancel does
        thread.join(120)
    finally:
        worker.stopping.set()
        thread.join(60)
    cancelled = _run(sessions, run.id)
    assert cancelled.status == "cancelled" and cancelled.progress["step"] < 200 and cancelled.lease_owner is None
    _untouched(sessions)
    with sessions() as session:
        assert session.scalar(select(Student.id).where(Student.run_id == run.id)) is None



def test_two_attempts_never_write_into_the_same_artifact_directory(model_path, tmp_path):
    """A worker whose lease ran out and its successor both finish training: each saves into a
    directory of its own, so the one the registry names is never replaced or half-written."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.trainer.distill import load_tokenizer, save_artifacts

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), LoraConfig(r=2, target_modules=["q_proj"]))
    tokenizer = load_tokenizer(model_path)
    config = DistillationConfig(**TINY, merge=False)
    stale, _ = save_artifacts(config, model, tokenizer, tmp_path)
    written = {path.name: path.stat().st_mtime_ns for path in stale.iterdir()}
    successor, _ = save_artifacts(config, model, tokenizer, tmp_path)
    assert stale != successor and stale.parent.parent == successor.parent.parent == tmp_path / "outputs"
    assert {path.name: path.stat().st_mtime_ns for path in stale.iterdir()} == written  # untouched by the successor
    assert (successor / "adapter_model.safetensors").is_file() and not list(tmp_path.rglob("*.tmp"))
