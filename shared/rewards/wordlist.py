"""Offensive words from a list: better-profanity's word list and its leetspeak variants. A list
check, not the learned model of the `profanity` reward: the safety task's second opinion."""

from __future__ import annotations

from shared.rewards.batch import BatchReward
from shared.rewards.specs import WordListSpec


class WordListReward(BatchReward):
    """1 for a response with no listed word, else 0: the mean over answers is the share of clean answers."""

    def __init__(self, spec: WordListSpec) -> None:
        from better_profanity import Profanity

        self.name = "wordlist"
        self._list = Profanity()  # its own instance: the module-level one is shared, mutable state
        self._list.load_censor_words()

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [0.0 if self._list.contains_profanity(text) else 1.0 for text in responses]
