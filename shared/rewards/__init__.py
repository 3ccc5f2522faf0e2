"""Reward models behind one protocol; `build_reward` turns a spec into a ready scorer.

Importing this package is cheap: each reward imports its heavy library (torch, spaCy,
scikit-learn) only when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from shared.errors import InvalidRequest
from shared.rewards.base import RewardModel
from shared.rewards.specs import (
    REWARD_TYPES,
    HFClassifierSpec,
    HTTPSpec,
    LLMJudgeSpec,
    PIISpec,
    ProfanitySpec,
    RewardSpec,
    VaderSpec,
    parse_reward_spec,
)

if TYPE_CHECKING:  # the engines package pulls in settings and the model store; scoring needs neither
    from shared.engines.base import Engine

__all__ = ["REWARD_TYPES", "RewardModel", "RewardSpec", "build_reward", "parse_reward_spec"]


def build_reward(spec: RewardSpec | Mapping[str, Any], *, judge_engine: Engine | None = None) -> RewardModel:
    """Build (and load, once) the reward model a spec describes; `judge_engine` serves llm-judge."""
    spec = parse_reward_spec(spec)
    if isinstance(spec, VaderSpec):
        from shared.rewards.vader import VaderReward

        return VaderReward(spec)
    if isinstance(spec, HFClassifierSpec):
        from shared.rewards.hf_classifier import HFClassifierReward

        return HFClassifierReward(spec)
    if isinstance(spec, PIISpec):
        from shared.rewards.pii import PIIReward

        return PIIReward(spec)
    if isinstance(spec, ProfanitySpec):
        from shared.rewards.profanity import ProfanityReward

        return ProfanityReward(spec)
    if isinstance(spec, LLMJudgeSpec):
        if judge_engine is None:
            raise InvalidRequest(
                "reward 'llm-judge' needs a judge engine, and none is configured here", param="reward.type"
            )
        from shared.rewards.llm_judge import LLMJudgeReward

        return LLMJudgeReward(spec, judge_engine)
    if isinstance(spec, HTTPSpec):
        from shared.rewards.http import HTTPReward

        return HTTPReward(spec)
    raise InvalidRequest(f"no builder for reward type {spec.type!r}")  # unreachable while specs and builders agree
