"""VADER sentiment: a lexicon and rules shipped inside the package, so it needs no model file at all."""

from __future__ import annotations

from shared.rewards.batch import BatchReward
from shared.rewards.specs import VaderSpec


class VaderReward(BatchReward):
    """Compound polarity of the response in [-1, 1]; the prompt is ignored (the reward judges the answer)."""

    def __init__(self, spec: VaderSpec) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.name = "vader"
        self._analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [self._analyzer.polarity_scores(text)["compound"] for text in responses]
