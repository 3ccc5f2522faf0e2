"""The reward protocol: score a batch of (prompt, response) pairs, higher is better."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class RewardModel(Protocol):
    """A batched scorer. `score` returns one float per response, in input order."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...
