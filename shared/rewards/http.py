"""HTTP reward: the user's own scoring service, one POST per batch.

Contract: POST {"prompts": [...], "responses": [...]} as JSON; the reply is {"scores": [...]},
one number per response, in order. Anything else is a RewardError naming what went wrong.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.errors import RewardError
from shared.rewards.batch import BatchReward
from shared.rewards.specs import HTTPSpec


class HTTPReward(BatchReward):
    def __init__(self, spec: HTTPSpec) -> None:
        self.name = f"http:{spec.url}"
        self._url = spec.url
        self._timeout = spec.timeout
        self._headers = dict(spec.headers)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        try:
            payload = {"prompts": prompts, "responses": responses}
            reply = httpx.post(self._url, json=payload, headers=self._headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise RewardError(f"{self.name}: request failed: {type(exc).__name__}: {exc}") from None
        if reply.status_code >= 400:
            raise RewardError(f"{self.name}: server answered HTTP {reply.status_code}: {reply.text[:200]!r}")
        try:
            body: Any = reply.json()
        except ValueError:
            raise RewardError(f"{self.name}: answer is not JSON: {reply.text[:200]!r}") from None
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or not all(_is_number(value) for value in scores):
            raise RewardError(f'{self.name}: answer must be {{"scores": [numbers]}}, got {reply.text[:200]!r}')
        if len(scores) != len(responses):
            raise RewardError(f"{self.name}: answer has {len(scores)} scores for {len(responses)} responses")
        return scores


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but true/false is not a score.
    return isinstance(value, (int, float)) and not isinstance(value, bool)
