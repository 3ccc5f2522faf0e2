"""Data-parallel training for real: two gloo ranks on the CPU (torch DDP under torch.distributed's
elastic launcher) train the bundled model, and the run is what one process would have trained.

Tiny on purpose (6 pairs, a few steps, 1 thread per rank): the machines have two cores.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from services.trainer.data import batch_indices
from services.trainer.distill import Interrupted, latest_checkpoint
from services.trainer.dpo import REFERENCE_PASS
from services.trainer.training import train
from services.trainer.worker import TrainerWorker
from shared.db.models import DistillationRun, Student
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference
from shared.distillation.runs import submit

ANSWER = "What a lovely, joyful film; I adored it."
# No dropout: with it, the ranks' masks differ from one process's and the weights could not be compared.
CONFIG = dict(task="sentiment", batch_size=3, max_seq_len=48, warmup_ratio=0.0, lora_dropout=0.0, learning_rate=1e-3, seed=5)


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_two_gloo_ranks_train_disjoint_shards_in_sync_and_resume(tmp_path: Path, model_path: Path, helpers):
    examples = [Example(i, prompt, ANSWER) for i, prompt in enumerate(helpers.film_prompts[:6])]
    config = DistillationConfig(**CONFIG, max_steps=5, save_steps=10)

    alone = train(config, model_path, examples, tmp_path / "one", threads=1)
    assert alone.processes == 1 and alone.device == "cpu" and alone.data_parallel is None

    # Two ranks; the worker's control answers "stopping" after step 2: both ranks stop, rank 0 checkpoints.
    calls: list[int] = []

    def on_step(step: int, total: int, loss: float) -> str | None:
        calls.append(step)
        return "stopping" if step == 2 else None

    run_dir = tmp_path / "two"
    with pytest.raises(Interrupted) as stopped:
        train(config, model_path, examples, run_dir, on_step=on_step, processes=2, threads=1)
    assert (stopped.value.reason, stopped.value.step) == ("stopping", 2) and calls == [1, 2]
    assert latest_checkpoint(run_dir).name == "step-000002" and not (run_dir / "outputs").exists()

    # A fresh launch resumes from rank 0's checkpoint and finishes.
    progress: list[tuple[int, float]] = []
    both = train(config, model_path, examples, run_dir, on_step=lambda s, t, loss: progress.append((s, loss)), processes=2, threads=1)
    assert both.resumed_from == 2 and both.steps == 5 and [s for s, _ in progress] == [3, 4, 5]
    parallel = both.data_parallel
    assert parallel["processes"] == 2 and parallel["backend"] == "gloo" and both.device == "cpu" and both.processes == 2

    # Shards: each step's batch split between the ranks, each pair trained exactly as often as one process trains it.
    one_process = Counter(i for step in range(2, 5) for i in batch_indices(len(examples), 3, step, config.seed))
    rank0, rank1 = parallel["seen_per_rank"]
    assert [a + b for a, b in zip(rank0, rank1)] == [one_process[i] for i in range(len(examples))]
    assert parallel["examples_per_rank"] == [6, 3]  # 3 steps x (2 | 1) of each 3-pair batch
    assert parallel["in_sync"] is True  # identical trainable weights on both ranks at the end

    # The same run as one process: the loss curve (global batch means, rank 0 reported them) and the weights.
    for (step_a, loss_a), (step_b, loss_b) in zip(alone.losses, both.losses):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=1e-3, abs=1e-4)
    assert [loss for _, loss in both.losses[2:]] == [round(loss, 5) for _, loss in progress]
    ours, theirs = _adapter(both.adapter_dir), _adapter(alone.adapter_dir)
    assert ours.keys() == theirs.keys()
    scale = max(float(t.abs().max()) for t in theirs.values())
    # Float rounding differs (gradients summed over ranks); Adam's first steps amplify it in near-zero entries.
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 0.02 * scale


def test_two_ranks_stop_together_within_a_batch_of_the_reference_pass(tmp_path: Path, model_path: Path, helpers):
    """Every rank computes every pair's reference; a cancel that rank 0 hears after one batch of
    them reaches the other rank at the same batch, so both stop there (neither waits in a step for
    a rank that left) before any step is taken."""
    preferences = [Preference(prompt, ANSWER, "It was a film.", 0.9, 0.0, "revision", (i,))
                   for i, prompt in enumerate(helpers.film_prompts)]  # 12 pairs: batches of 8 and 4
    config = DistillationConfig(**CONFIG, objective="dpo", max_steps=2)
    seen: list[tuple[str, int, int]] = []
    steps: list[tuple] = []

    def on_pass(name: str, done: int, total: int) -> str | None:
        seen.append((name, done, total))
        return "cancelled" if done > 0 else None

    with pytest.raises(Interrupted) as cancelled:
        train(config, model_path, [], tmp_path / "run", on_step=lambda *step: steps.append(step), on_pass=on_pass,
              preferences=preferences, processes=2, threads=1)
    assert (cancelled.value.reason, cancelled.value.step) == ("cancelled", 0) and steps == []
    assert seen == [(REFERENCE_PASS, 0, 12), (REFERENCE_PASS, 8, 12)]


def test_trainer_worker_with_two_processes_registers_a_student(make_settings, model_path, helpers):
    """An SFT→DPO run on two ranks, through the worker: both phases train data-parallel, and rank 0
    relays the steps and the preference passes' progress to the worker, which writes them."""
    settings = make_settings(trainer={"processes": 2, "threads": 1, "device": "auto"})
    sessions = helpers.migrated(settings)
    helpers.store_fixed_pairs(sessions, helpers.film_prompts[:6], ANSWER)  # drafts "meh.", revisions ANSWER: 6 preference pairs
    run, _ = submit(sessions, settings, DistillationConfig(**CONFIG, objective="sft_dpo", max_steps=3, save_steps=2,
                                                        eval_prompts=helpers.film_prompts[-1:], eval_samples=1, eval_max_tokens=6,
                                                        collapse_check=False))
    assert TrainerWorker(settings, sessions).run_once()
    with sessions() as session:
        done = session.get(DistillationRun, run.id)
        student = session.query(Student).filter(Student.run_id == run.id).one()
    assert done.status == "succeeded", done.error
    assert done.progress["step"] == done.progress["total"] == 6 and done.progress["loss"] > 0  # 3 supervised + 3 preference steps
    assert done.progress["device"] == "cpu" and done.progress["processes"] == 2
    assert done.progress["passes"] == {"reference log-probs": {"done": 6, "total": 6}, "preference figures": {"done": 6, "total": 6}}
    train_metrics = done.metrics["train"]
    assert train_metrics["processes"] == 2 and train_metrics["device"] == "cpu" and len(train_metrics["loss_curve"]) == 6
    assert train_metrics["preference"]["pairs"] == 6 and train_metrics["preference"]["steps"] == 3
    # Each phase's 3 steps x (2 | 1) of each 3-item batch: pairs, then preference pairs.
    assert train_metrics["data_parallel"]["in_sync"] is True and train_metrics["data_parallel"]["examples_per_rank"] == [12, 6]
    assert Path(student.adapter_path, "adapter_model.safetensors").is_file()


def test_processes_and_device_settings_are_validated(make_settings):
    from pydantic import ValidationError

    from shared.device import DeviceUnavailable, check_processes, resolve_device

    with pytest.raises(ValidationError, match=r"trainer.processes\n.*must be at least 1"):
        make_settings(trainer={"processes": 0})
    with pytest.raises(ValidationError):
        make_settings(trainer={"device": "tpu"})
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal below cannot be exercised")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable, match="sees no CUDA device"):
        resolve_device("cuda")
    check_processes(4, "cpu")  # any number of gloo ranks on the CPU


def test_trainer_cli_refuses_cuda_without_one(tmp_path: Path):
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = subprocess.run([sys.executable, "-m", "services.cli", "trainer", "work", "--device", "cuda", "--once",
                             "--database-url", f"sqlite:///{tmp_path / 'dsc.db'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "sees no CUDA device" in " ".join(result.stderr.split())
