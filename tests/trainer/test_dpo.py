"""The preference objectives for real: DPO and SFT→DPO on the bundled model, from chains stored as
the teacher stores them, through the trainer's own loop and its worker.

- a run SIGKILLed in its preference phase resumes to exactly the weights of a run never interrupted
  (the reference log-probs come back from the run's file, not from weights that moved since);
- a `dpo` run through the admin API and the trainer worker learns to prefer its chosen answers,
  never trains on an evaluation prompt, and registers a student with its preference figures;
- a submission without enough preference pairs, or asking to auto-promote a preference objective's
  student, is refused, nothing queued.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.trainer.distill import Interrupted, latest_checkpoint
from services.trainer.dpo import FIGURES_PASS, REFERENCE_FILE, REFERENCE_PASS
from services.trainer.training import train
from services.trainer.worker import TrainerWorker
from shared.db.models import DistillationRun, Student
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference

CHOSEN = "What a lovely, joyful film; I adored it."
REJECTED = "It was a film. Nothing else to say about it."
TINY = dict(task="sentiment", batch_size=2, max_seq_len=48, learning_rate=1e-3, seed=3)


def _data(prompts: list[str]) -> tuple[list[Example], list[Preference]]:
    examples = [Example(i, prompt, CHOSEN, 0.0, 0.9) for i, prompt in enumerate(prompts)]
    preferences = [Preference(prompt, CHOSEN, REJECTED, 0.9, 0.0, "revision", (i,)) for i, prompt in enumerate(prompts)]
    return examples, preferences


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from services.trainer.training import train
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference
spec = json.loads(Path(sys.argv[1]).read_text())
train(DistillationConfig(**spec["config"]), Path(spec["model"]), [Example(**e) for e in spec["examples"]], Path(spec["run_dir"]),
      preferences=[Preference.from_json(p) for p in spec["preferences"]], threads=1)
"""


def test_a_killed_sft_dpo_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path, model_path: Path, helpers):
    examples, preferences = _data(helpers.film_prompts[:6])
    # 4 supervised steps, then 4 preference steps; a checkpoint after every step.
    config = DistillationConfig(**TINY, objective="sft_dpo", max_steps=4, save_steps=1)
    passes: list[tuple[str, int, int]] = []
    alone = train(config, model_path, examples, tmp_path / "alone", preferences=preferences, threads=1,
                  on_pass=lambda *done: passes.append(done))
    assert alone.steps == 8 and alone.preference["steps"] == 4 and alone.preference["pairs"] == 6
    # The passes over every pair, outside the steps, report how far they are: the reference, then the figures at the end.
    assert passes == [(REFERENCE_PASS, 0, 6), (REFERENCE_PASS, 6, 6), (FIGURES_PASS, 0, 6), (FIGURES_PASS, 6, 6)]

    run_dir = tmp_path / "killed"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": config.model_dump(mode="json"), "model": str(model_path), "run_dir": str(run_dir),
                                "examples": [e.to_json() for e in examples], "preferences": [p.to_json() for p in preferences]}))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec)])
    try:
        # Killed once the preference phase has taken a step: its reference is on disk, its weights have moved.
        helpers.wait_for(lambda: child.poll() is None and (latest_checkpoint(run_dir) or Path("step-0")).name >= "step-000005",
                         300, "a checkpoint in the preference phase")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert (run_dir / REFERENCE_FILE).is_file() and not (run_dir / "outputs").exists()
    resumed_at = int(latest_checkpoint(run_dir).name.split("-")[1])
    assert 5 <= resumed_at < 8

    passes.clear()
    resumed = train(config, model_path, examples, run_dir, preferences=preferences, threads=1, on_pass=lambda *done: passes.append(done))
    assert resumed.resumed_from == resumed_at and resumed.steps == 8
    assert passes[0] == (REFERENCE_PASS, 6, 6)  # read back from the run's file, not computed again
    assert resumed.losses == alone.losses  # the same losses at every step, the killed attempt's included
    ours, theirs = _adapter(resumed.adapter_dir), _adapter(alone.adapter_dir)
    assert ours.keys() == theirs.keys() and all(bool((ours[k] == theirs[k]).all()) for k in ours)
    assert resumed.preference == alone.preference


def test_a_stopped_dpo_run_resumes_from_its_checkpoint(tmp_path: Path, model_path: Path, helpers):
    """A pure `dpo` run stopped by its worker (cancel, shutdown) after step 2 checkpoints there and
    finishes from it; its loss starts at log 2 (the student is its own reference at step 0)."""
    _examples, preferences = _data(helpers.film_prompts[:6])
    config = DistillationConfig(**TINY, objective="dpo", max_steps=4, save_steps=10)
    with pytest.raises(Interrupted):
        train(config, model_path, [], tmp_path / "run", preferences=preferences, threads=1,
              on_step=lambda step, total, loss: "stopping" if step == 2 else None)
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"
    done = train(config, model_path, [], tmp_path / "run", preferences=preferences, threads=1)
    assert done.resumed_from == 2 and done.steps == 4 and done.train_examples == 0
    assert done.losses[0][1] == pytest.approx(0.69315, abs=1e-3)


def test_a_stop_asked_during_a_pass_is_answered_within_a_batch_of_pairs(tmp_path: Path, model_path: Path, helpers):
    """A cancel or a shutdown asked while a pass goes over every pair (minutes on a CPU) stops the
    run after that batch of pairs, not at the next step: in the reference pass before any step
    (nothing written), and in the figures pass after the last step, whose checkpoint a resumed run
    finishes from with that pass alone."""
    _examples, preferences = _data(helpers.film_prompts)  # 12 pairs: batches of 8 and 4
    config = DistillationConfig(**TINY, objective="dpo", max_steps=2, save_steps=10)
    steps: list[tuple] = []
    seen: list[tuple[str, int, int]] = []

    def stop_at(pass_name: str, reason: str):
        def on_pass(name: str, done: int, total: int) -> str | None:
            seen.append((name, done, total))
            return reason if name == pass_name and done > 0 else None
        return on_pass

    with pytest.raises(Interrupted) as cancelled:
        train(config, model_path, [], tmp_path / "cancelled", preferences=preferences, threads=1,
              on_step=lambda *step: steps.append(step), on_pass=stop_at(REFERENCE_PASS, "cancelled"))
    assert (cancelled.value.reason, cancelled.value.step) == ("cancelled", 0) and steps == []
    assert seen == [(REFERENCE_PASS, 0, 12), (REFERENCE_PASS, 8, 12)]
    assert not (tmp_path / "cancelled" / REFERENCE_FILE).exists()

    seen.clear()
    run_dir = tmp_path / "stopped"
    with pytest.raises(Interrupted) as stopped:
        train(config, model_path, [], run_dir, preferences=preferences, threads=1, on_pass=stop_at(FIGURES_PASS, "stopping"))
    assert (stopped.value.reason, stopped.value.step) == ("stopping", 2)
    assert seen[-2:] == [(FIGURES_PASS, 0, 12), (FIGURES_PASS, 8, 12)]
    assert latest_checkpoint(run_dir).name == "step-000002" and not (run_dir / "outputs").exists()

    seen.clear()
    done = train(config, model_path, [], run_dir, preferences=preferences, threads=1, on_pass=lambda *step: seen.append(step))
    assert done.resumed_from == 2 and done.steps == 2 and done.preference["pairs"] == 12
    assert seen == [(REFERENCE_PASS, 12, 12), (FIGURES_PASS, 0, 12), (FIGURES_PASS, 8, 12), (FIGURES_PASS, 12, 12)]


def test_a_dpo_distillation_learns_its_preferences_and_registers_a_student(make_settings, model_path, helpers, teacher):
    settings = make_settings()
    sessions = helpers.migrated(settings)
    train_prompts, eval_prompt = helpers.film_prompts[:8], helpers.film_prompts[-1]
    helpers.store_fixed_pairs(sessions, [*train_prompts, eval_prompt], CHOSEN)  # drafts "meh." (0.0), revisions CHOSEN (0.9)
    with teacher(settings) as t, t.admin() as admin:
        too_strict = admin.post("/admin/distillations", json={**TINY, "objective": "dpo", "min_margin": 0.95, "eval_prompts": [eval_prompt]})
        assert too_strict.status_code == 400 and "too few preference pairs: 0" in too_strict.json()["error"]["message"]
        unread = admin.post("/admin/distillations", json={**TINY, "objective": "sft_dpo", "auto_promote": True, "eval_prompts": [eval_prompt]})
        assert unread.status_code == 400 and "is not auto-promoted" in unread.json()["error"]["message"]
        answer = admin.post("/admin/distillations", json={**TINY, "objective": "dpo", "max_steps": 12, "dpo_beta": 0.5, "eval_prompts": [eval_prompt],
                                                          "eval_samples": 1, "eval_max_tokens": 6, "collapse_check": False})
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["id"]
        assert answer.json()["progress"]["preferences"] == 8 and answer.json()["progress"]["total"] == 12

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DistillationRun)) == 1  # the refused ones queued nothing
    assert TrainerWorker(settings, sessions).run_once()
    with sessions() as session:
        run = session.get(DistillationRun, run_id)
        assert run.status == "succeeded", run.error
        student = session.scalar(select(Student).where(Student.run_id == run_id))
    assert student is not None and run.config["chain_id_max"] >= 9
    figures = run.metrics["train"]
    assert figures["objective"] == "dpo" and figures["steps"] == 12 and figures["preference"]["pairs"] == 8
    # Against its reference (the base), the student now favours the chosen answer of its training pairs.
    assert figures["preference"]["accuracy"] >= 0.75 and figures["preference"]["mean_margin"] > 0
    assert figures["preference"]["mean_loss"] < 0.69  # below log 2, where it started
    lines = (Path(run.artifact_dir) / "preferences.jsonl").read_text().splitlines()
    trained_on = [json.loads(line) for line in lines]
    assert sorted(p["prompt"] for p in trained_on) == sorted(train_prompts)  # never the evaluation prompt
    assert {(p["chosen"], p["rejected"], p["source"]) for p in trained_on} == {(CHOSEN, "meh.", "revision")}
