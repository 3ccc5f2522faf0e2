"""Reward models behind one protocol; `build_reward` turns a spec into a ready scorer.

Importing this package is cheap: each reward imports its heavy library (torch, spaCy,
scikit-learn) only when it is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from shared.errors import InvalidRequest
from shared.rewards.base import RewardModel
from shared.rewards.net import NetworkPolicy
from shared.rewards.specs import (
    REWARD_TYPES,
    HFClassifierSpec,
    HTTPSpec,
    LLMJudgeSpec,
    PIISpec,
    PresidioSpec,
    ProfanitySpec,
    RewardSpec,
    TextBlobSpec,
    VaderSpec,
    WordListSpec,
    parse_reward_spec,
    public_reward,
)

if TYPE_CHECKING:  # the engines package pulls in settings and the model store; scoring needs neither
    from shared.engines.base import Engine

__all__ = ["REWARD_TYPES", "NetworkPolicy", "RewardModel", "RewardSpec", "build_reward", "check_reward", "parse_reward_spec", "public_reward"]


def check_reward(spec: RewardSpec | Mapping[str, Any], *, network: NetworkPolicy) -> None:
    """What a spec needs of this deployment, checked without loading anything: that an http
    reward's host resolves to addresses the operator permits, and that its secrets are set."""
    spec = parse_reward_spec(spec)
    if isinstance(spec, HTTPSpec):
        from shared.rewards.http import missing_secrets

        network.check_url(spec.url)
        if missing := missing_secrets(spec):
            raise InvalidRequest(
                f"headers_from_env names environment variable(s) {', '.join(missing)}, which are not set on the teacher",
                param="reward.headers_from_env",
            )


# The rewards that need nothing but their spec: the module and class that score for each.
LOCAL_REWARDS: dict[type, tuple[str, str]] = {
    VaderSpec: ("shared.rewards.vader", "VaderReward"),
    HFClassifierSpec: ("shared.rewards.hf_classifier", "HFClassifierReward"),
    PIISpec: ("shared.rewards.pii", "PIIReward"),
    ProfanitySpec: ("shared.rewards.profanity", "ProfanityReward"),
    TextBlobSpec: ("shared.rewards.textblob_sentiment", "TextBlobReward"),
    WordListSpec: ("shared.rewards.wordlist", "WordListReward"),
    PresidioSpec: ("shared.rewards.presidio_pii", "PresidioReward"),
}


def build_reward(
    spec: RewardSpec | Mapping[str, Any], *, judge_engine: Engine | None = None, network: NetworkPolicy | None = None
) -> RewardModel:
    """Build (and load, once) the reward model a spec describes; `judge_engine` serves llm-judge;
    `network` says where an http reward may connect (default: public addresses only)."""
    spec = parse_reward_spec(spec)
    network = network or NetworkPolicy()
    check_reward(spec, network=network)
    if isinstance(spec, LLMJudgeSpec):
        if judge_engine is None:
            raise InvalidRequest(
                "reward 'llm-judge' needs a judge engine, and none is configured here", param="reward.type"
            )
        from shared.rewards.llm_judge import LLMJudgeReward

        return LLMJudgeReward(spec, judge_engine)
    if isinstance(spec, HTTPSpec):
        from shared.rewards.http import HTTPReward

        return HTTPReward(spec, network)
    if type(spec) in LOCAL_REWARDS:  # imported only when built: each loads its own heavy library
        module, name = LOCAL_REWARDS[type(spec)]
        return getattr(importlib.import_module(module), name)(spec)
    raise InvalidRequest(f"no builder for reward type {spec.type!r}")  # unreachable while specs and builders agree
