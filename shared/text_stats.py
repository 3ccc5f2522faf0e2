"""Repetition and diversity of generated text, by words: the degeneration check of an evaluation
and the training-data filter that keeps looping answers out of a student's data use the same measure.
Also where a cut-off answer's last finished sentence ends."""

from __future__ import annotations

import re
from typing import Sequence

# A sentence ends at . ! ? or … (closing quotes, brackets and markdown emphasis may follow) before a
# space or the end; a period after a digit is a list number ("1."), not an end.
_SENTENCE_END = re.compile(r"(?<!\d)[.!?…]+[\"'”’)\]*_]*(?=\s|$)")


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


def finished_part(text: str, min_share: float = 0.5) -> str | None:
    """`text` up to the end of its last finished sentence, or None when there is none or it keeps
    less than `min_share` of the text's characters (a cut-off answer reduced to its preamble)."""
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    kept = text[:ends[-1]]
    return kept if len(kept) >= min_share * len(text.rstrip()) else None
