"""Offensive language: alt-profanity-check's linear model (scikit-learn, shipped inside the package)."""

from __future__ import annotations

from shared.rewards.batch import BatchReward
from shared.rewards.specs import ProfanitySpec


class ProfanityReward(BatchReward):
    """1 − p(offensive) of the response, in [0, 1]: higher is more harmless."""

    def __init__(self, spec: ProfanitySpec) -> None:
        from profanity_check import predict_prob

        self.name = "profanity"
        self._predict_prob = predict_prob

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        # One vectorised call for the whole batch.
        return [1.0 - float(p) for p in self._predict_prob(responses)]
