"""TextBlob polarity: pattern's adjective lexicon (shipped inside the package) with negation and
intensifiers. Built apart from VADER, so it can disagree with it: the sentiment task's second opinion."""

from __future__ import annotations

from shared.rewards.batch import BatchReward
from shared.rewards.specs import TextBlobSpec


class TextBlobReward(BatchReward):
    """Polarity of the response in [-1, 1]; the prompt is ignored."""

    def __init__(self, spec: TextBlobSpec) -> None:
        from textblob.en.sentiments import PatternAnalyzer

        self.name = "textblob"
        self._analyzer = PatternAnalyzer()

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(self._analyzer.analyze(text).polarity) for text in responses]
