"""The trainer's entry point: train one run on one process, or on several data-parallel ranks.

    ranks.py ← distill.py (one rank's loop) ← parallel.py (N ranks) ← training.py (this: which of the two)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from services.trainer.distill import StepCallback, TrainResult, run_training
from services.trainer.dpo import PassCallback
from services.trainer.parallel import launch
from services.trainer.ranks import Ranks
from shared.device import check_processes, release_freed_memory, resolve_device
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference


def train(
    config: DistillationConfig,
    base_path: Path,
    examples: Sequence[Example],
    run_dir: Path,
    *,
    on_step: StepCallback | None = None,
    device: str = "auto",
    processes: int = 1,
    threads: int | None = None,
    keep_checkpoints: int = 2,
    preferences: Sequence[Preference] = (),
    on_pass: PassCallback | None = None,
) -> TrainResult:
    """Train (or resume training) the student on `device` (auto|cpu|cuda) with `processes`
    data-parallel ranks, on `examples` (the supervised phase) and `preferences` (the preference
    phase), as the run's objective has them; write the final adapter (and merged weights). The newest
    `keep_checkpoints` checkpoints stay on disk (settings.trainer.keep_checkpoints). `on_pass` hears
    how far the preference phase's passes over every pair are (dpo.PassCallback).

    Raises Interrupted when `on_step` asks to stop (after writing a checkpoint) or `on_pass` does
    (within a batch of pairs)."""
    resolved = resolve_device(device)
    check_processes(processes, resolved)
    if processes > 1:
        return launch(config, base_path, examples, run_dir, on_step=on_step, processes=processes, device=resolved, threads=threads,
                      keep_checkpoints=keep_checkpoints, preferences=preferences, on_pass=on_pass)
    try:
        return run_training(config, base_path, examples, run_dir, on_step=on_step, ranks=Ranks(device=resolved),
                            keep_checkpoints=keep_checkpoints, preferences=preferences, on_pass=on_pass)
    finally:
        release_freed_memory(resolved)  # before the evaluation engines start
