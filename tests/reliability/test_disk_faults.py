"""Model and disk faults under a real trainer process: a base model directory whose config is
corrupt, one that is gone, and an artifact volume that fills up during the save (a small tmpfs).
Each run ends `failed` with a reason that names the problem; the registry gains no student and the
active student stays active; the trainer carries on with the next run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from live_server import wait_for
from shared.critique_revise import Chain, Step
from shared.db.models import DistillationRun, Job, Student, utcnow
from shared.db.session import make_engine, session_factory, transaction, upgrade
from shared.db.store import record_chains
from shared.distillation.config import DistillationConfig
from shared.distillation.runs import submit
from shared.settings import Settings

PROMPTS = [f"Write a short review of film number {i}." for i in range(8)]
TINY = dict(task="sentiment", batch_size=2, max_seq_len=48, max_steps=2, save_steps=1, eval_max_tokens=4, eval_samples=1,
            collapse_check=False, eval_prompts=["Review the film Heat."])
VOLUME = "256k"  # room for the run's snapshot, not for a checkpoint of the adapter and its optimizer state


@pytest.fixture()
def small_volume(tmp_path: Path):
    """A tmpfs of VOLUME bytes (needs root, as CI has); unmounted after the test."""
    mount = tmp_path / "artifacts"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _linked_copy(model: Path, to: Path) -> Path:
    """The model's files as links in a directory of their own (no gigabyte copies)."""
    to.mkdir()
    for item in model.iterdir():
        (to / item.name).symlink_to(item)
    return to


def _store_pairs(sessions) -> None:
    traces = [Chain(i, 0, prompt, "meh.", 0.0, [Step("too flat", "A lovely, joyful film.", 0.9, True)], "A lovely, joyful film.", 0.9)
              for i, prompt in enumerate(PROMPTS)]
    with transaction(sessions) as session:
        session.add(Job(id="fixed-job", kind="cli", task_name="sentiment", status="succeeded", prompts=PROMPTS, total=len(PROMPTS), done=len(PROMPTS)))
        session.flush()
        record_chains(session, job_id="fixed-job", task_name="sentiment", acceptance="improve", traces=traces)
        session.add(Student(id="active-one", name="sentiment-student", version=1, task_name="sentiment", base_model="some-base",
                            metrics={}, active=True, promoted_at=utcnow()))


def test_bad_model_directories_and_a_full_volume_fail_their_runs_and_touch_no_student(
        services, tmp_path, model_path, small_volume, monkeypatch):
    database_url = f"sqlite:///{tmp_path / 'dsc.db'}"
    corrupt, missing = _linked_copy(model_path, tmp_path / "corrupt-model"), _linked_copy(model_path, tmp_path / "deleted-model")
    (corrupt / "config.json").unlink()
    (corrupt / "config.json").write_text("{ this is not json")

    settings_env = dict(model_store=str(small_volume), distill_min_pairs="2", trainer_poll_seconds="0.2",
                        student_base_model=str(model_path))
    for key, value in settings_env.items():
        monkeypatch.setenv(f"DSC_{key.upper()}", value)
    monkeypatch.setenv("DSC_DATABASE_URL", database_url)
    settings = Settings()  # as the API would see it: submission goes through the control plane's submit()
    upgrade(database_url)
    db = make_engine(database_url)
    sessions = session_factory(db)
    try:
        _store_pairs(sessions)
        runs = {
            "corrupt": submit(sessions, settings, DistillationConfig(**TINY, base_model=str(corrupt)))[0].id,
            "missing": submit(sessions, settings, DistillationConfig(**TINY, base_model=str(missing)))[0].id,
            "full": submit(sessions, settings, DistillationConfig(**TINY))[0].id,
        }
        shutil.rmtree(missing)  # gone between submission and training (a volume that was unmounted)

        trainer = services(database_url, **settings_env).start("trainer", "work", "--threads", "1", name="trainer", serve=False)

        def finished() -> dict[str, DistillationRun] | None:
            with sessions() as session:
                rows = {name: session.get(DistillationRun, run_id) for name, run_id in runs.items()}
            return rows if all(row.status in ("succeeded", "failed", "cancelled") for row in rows.values()) else None

        ended = wait_for(finished, 600, "the three runs to end", interval=0.5)
        with sessions() as session:
            students = session.execute(select(Student.id, Student.active)).all()
        assert trainer.process.poll() is None, trainer.log()[-3000:]  # one bad run does not take the trainer down
    finally:
        db.dispose()

    for name, run in ended.items():
        assert run.status == "failed" and run.error and run.finished_at is not None, (name, run.status, run.error)
        assert run.lease_owner is None and run.progress["phase"] == "failed"
        print(f"\n{name}: {run.error[:200]}")
    assert "config.json" in ended["corrupt"].error or "json" in ended["corrupt"].error.lower(), ended["corrupt"].error
    assert str(missing) in ended["missing"].error or "not found" in ended["missing"].error.lower(), ended["missing"].error
    assert "No space left on device" in ended["full"].error, ended["full"].error
    assert students == [("active-one", True)]  # no student registered, the active one still active
    assert "Traceback" not in ended["full"].error
    assert not list(small_volume.rglob("*.tmp")), "a failed write left a partial file or directory behind"
