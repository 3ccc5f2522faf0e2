"""A run keeps its newest `trainer.keep_checkpoints` checkpoints (DSC_TRAINER_KEEP_CHECKPOINTS)."""

from __future__ import annotations

from pathlib import Path


def test_only_the_newest_checkpoints_stay(tmp_path: Path):
    import torch

    from services.trainer.distill import _save_checkpoint, latest_checkpoint
    from services.trainer.ranks import Ranks

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in range(1, 5):
        _save_checkpoint(tmp_path, step, model, optimizer, scheduler, [], Ranks(), keep=3)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003", "step-000004"]
    assert latest_checkpoint(tmp_path).name == "step-000004"
