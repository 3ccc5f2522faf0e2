"""Where this process stands among a run's training ranks (torch DDP), and what every rank must
agree on. A leaf of the trainer: distill.py trains as one rank, parallel.py starts several."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class Ranks:
    """This process's place among the training ranks; world 1 is plain single-process training."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def shard(self, indices: Sequence[int]) -> list[int]:
        return list(indices[self.rank::self.world])

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (rotary tables) are equal on every rank and never trained: no need to broadcast them each step.
        device_ids = [int(self.device.split(":")[1])] if self.device_type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks (every rank gets it)."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list | None:
        """Every rank's `value` in rank order on rank 0; None on the others."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(value, out, dst=0)
        return out


def params_digest(model) -> str:
    """sha256 of the trainable weights' bytes, in name order: equal on ranks that are in sync."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
