"""The one place every built-in reward checks its batch, so the six scorers only hold their own logic."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

from shared.errors import InvalidRequest, RewardError


class BatchReward(ABC):
    """Base of the built-in rewards: `score` validates the batch, `_score` does the work on a non-empty one."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        # A bare string is a Sequence too: score("p", "r") would silently score characters.
        if isinstance(prompts, str) or isinstance(responses, str):
            raise InvalidRequest(f"{self.name}: prompts and responses must be lists of strings, not a string")
        if len(prompts) != len(responses):
            raise InvalidRequest(
                f"{self.name}: got {len(prompts)} prompts but {len(responses)} responses; they must pair up"
            )
        if not responses:
            return []
        scores = [float(value) for value in self._score(list(prompts), list(responses))]
        if len(scores) != len(responses):
            raise RewardError(f"{self.name}: returned {len(scores)} scores for {len(responses)} responses")
        # A NaN would make every acceptance comparison false without a word; fail loudly instead.
        if not all(math.isfinite(value) for value in scores):
            raise RewardError(f"{self.name}: returned a non-finite score {scores}")
        return scores

    @abstractmethod
    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        """Scores of a non-empty batch whose lengths match, one per response, in order."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
