"""LLM-as-judge: an engine reads a judge prompt per answer and replies with a rating."""

from __future__ import annotations

import re

from shared.engines.base import Engine, SamplingParams
from shared.errors import RewardError
from shared.rewards.batch import BatchReward
from shared.rewards.specs import LLMJudgeSpec

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
PLACEHOLDER = re.compile(r"\{(prompt|response)\}")


def parse_rating(answer: str, min_score: float, max_score: float) -> float | None:
    """The first number in [min_score, max_score] in the judge's answer, or None.

    Taking the first in range (not the first number) lets "Rating: 8/10" give 8 and skips stray
    numbers a small judge prepends, like "Answer 2 gets 7" with a 5–10 scale.
    """
    for match in NUMBER.finditer(answer):
        value = float(match.group())
        if min_score <= value <= max_score:
            return value
    return None


def fill_template(template: str, prompt: str, response: str) -> str:
    # One pass, so braces inside the user's text (or a literal "{response}" in the prompt) stay as
    # they are; str.format would choke on JSON examples in the template.
    values = {"prompt": prompt, "response": response}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


class LLMJudgeReward(BatchReward):
    """Rating of each (prompt, response) by the judge engine; one batched `generate` per `score`."""

    def __init__(self, spec: LLMJudgeSpec, engine: Engine) -> None:
        self.name = f"llm-judge:{getattr(engine, 'model', 'engine')}"
        self._spec = spec
        self._engine = engine
        # Greedy by default: the same answer should get the same rating every time it is scored.
        self._params = SamplingParams(temperature=spec.temperature, top_p=1.0, max_tokens=spec.max_tokens, seed=0)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        conversations = [
            [{"role": "user", "content": fill_template(self._spec.prompt, prompt, response)}]
            for prompt, response in zip(prompts, responses)
        ]
        generations = self._engine.generate(conversations, self._params)
        if len(generations) != len(conversations):
            raise RewardError(
                f"{self.name}: judge returned {len(generations)} answers for {len(conversations)} requests"
            )
        scores = []
        for generation in generations:
            rating = parse_rating(generation.text, self._spec.min_score, self._spec.max_score)
            if rating is None:
                if self._spec.default is None:
                    raise RewardError(
                        f"{self.name}: judge answer {generation.text[:200]!r} holds no rating in "
                        f"[{self._spec.min_score:g}, {self._spec.max_score:g}] and the spec sets no default"
                    )
                rating = self._spec.default
            scores.append(rating)
        return scores
