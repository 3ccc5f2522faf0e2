"""Repetition and diversity of generated text, by words: the degeneration check of an evaluation
and the training-data filter that keeps looping answers out of a student's data use the same measure."""

from __future__ import annotations

from typing import Sequence


def words(text: str) -> list[str]:
    return text.casefold().split()


def repeated_share(text: str, n: int = 3) -> float:
    """Share of the answer's n-grams that repeat an earlier one (0 for an answer too short to have any)."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_share(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of all `texts`: low when every answer says the same."""
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, texts) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
