"""The critique→revise sampler (docs/architecture.md §1), batched across every chain of a call.

For prompt c, chain state x_t starts at x_0 ~ p(x | c). Each step:
    critique  k_t ~ p(k | c, x_t, critique request)
    revision  x'  ~ p(x | c, x_t, k_t, revision request)
    accept    x_{t+1} = x' or x_t, by the acceptance rule on the reward r
Targets the tilted posterior p(x | c, r) ∝ p(x | c) · exp(r(x) / β).

Batching is the only extra idea: all chains advance together, so one call makes every initial
answer, one every critique of a step, one every revision, and the reward scores a whole step at once.

This module is the algorithm only; turning a request into a run and storing its chains is
`shared.sampling_run`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from shared.engines.base import Conversation, Engine, SamplingParams
from shared.errors import EngineError, InvalidRequest
from shared.rewards.base import RewardModel

Acceptance = Literal["improve", "mh", "always"]
ACCEPTANCE_RULES: tuple[str, ...] = ("improve", "mh", "always")


@dataclass
class Step:
    critique: str
    revision: str
    reward: float
    accepted: bool


@dataclass
class Chain:
    prompt_index: int
    chain_index: int
    prompt: str
    initial_text: str
    initial_reward: float
    steps: list[Step] = field(default_factory=list)
    final_text: str = ""
    final_reward: float = 0.0
    tokens: int = 0

    @property
    def accepted(self) -> bool:
        """True when the chain moved to a new answer: it then yields an accepted pair."""
        return any(step.accepted for step in self.steps) and self.final_text != self.initial_text


def accept(rule: Acceptance, current: float, proposed: float, beta: float, rng: random.Random) -> bool:
    """The acceptance step: keep the revision or stay at the current answer."""
    if rule == "always":  # Self-Refine: no filter
        return True
    if rule == "improve":  # the reference code: strictly better only
        return proposed > current
    # Metropolis on the tilted target: the proposal's own likelihood ratio is taken as 1.
    return rng.random() < math.exp(min(0.0, (proposed - current) / beta))


def _phase_seed(seed: int | None, phase: int) -> int | None:
    return None if seed is None else seed + 7919 * phase


ProgressCallback = Callable[[str, int, int], None]


class Sampler:
    """Runs chains for one task's critique and revision requests with one engine and reward."""

    def __init__(self, engine: Engine, reward: RewardModel, *, critique_request: str, revision_request: str) -> None:
        self.engine = engine
        self.reward = reward
        self.critique_request = critique_request
        self.revision_request = revision_request

    def run(
        self,
        prompts: Sequence[str],
        *,
        steps: int = 1,
        chains: int = 1,
        acceptance: Acceptance = "improve",
        beta: float = 1.0,
        params: SamplingParams = SamplingParams(),
        progress: ProgressCallback | None = None,
    ) -> list[Chain]:
        validate_run(prompts, steps=steps, chains=chains, acceptance=acceptance, beta=beta)
        rng = random.Random(params.seed)
        total_phases = 1 + 2 * steps
        report = progress or (lambda phase, done, total: None)

        # Chain order: prompt-major, so chain k of prompt i sits at i * chains + k.
        runs = [(i, k, prompt) for i, prompt in enumerate(prompts) for k in range(chains)]
        first = self._generate([[{"role": "user", "content": prompt}] for _, _, prompt in runs], params, 0)
        first_rewards = self._score([prompt for _, _, prompt in runs], [gen.text for gen in first])
        state = [
            Chain(i, k, prompt, gen.text, reward, final_text=gen.text, final_reward=reward, tokens=gen.completion_tokens)
            for (i, k, prompt), gen, reward in zip(runs, first, first_rewards)
        ]
        report("initial", 1, total_phases)

        for t in range(steps):
            critique_turns = [self._critique_conversation(chain) for chain in state]
            critiques = self._generate(critique_turns, params, 1 + 2 * t)
            report(f"critique {t + 1}", 2 + 2 * t, total_phases)
            revision_turns = [
                turns + [{"role": "assistant", "content": critique.text}, {"role": "user", "content": self.revision_request}]
                for turns, critique in zip(critique_turns, critiques)
            ]
            revisions = self._generate(revision_turns, params, 2 + 2 * t)
            rewards = self._score([chain.prompt for chain in state], [gen.text for gen in revisions])
            for chain, critique, revision, reward in zip(state, critiques, revisions, rewards):
                moved = bool(revision.text) and accept(acceptance, chain.final_reward, reward, beta, rng)
                chain.steps.append(Step(critique.text, revision.text, reward, moved))
                chain.tokens += critique.completion_tokens + revision.completion_tokens
                if moved:
                    chain.final_text, chain.final_reward = revision.text, reward
            report(f"revision {t + 1}", 3 + 2 * t, total_phases)
        return state

    def _critique_conversation(self, chain: Chain) -> Conversation:
        return [
            {"role": "user", "content": chain.prompt},
            {"role": "assistant", "content": chain.final_text},
            {"role": "user", "content": self.critique_request},
        ]

    def _generate(self, conversations: list[Conversation], params: SamplingParams, phase: int):
        seeded = SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=_phase_seed(params.seed, phase),
            stop=params.stop,
        )
        generations = self.engine.generate(conversations, seeded)
        if len(generations) != len(conversations):  # a mis-paired answer would be stored as another prompt's
            raise EngineError(
                f"engine {getattr(self.engine, 'name', type(self.engine).__name__)} returned {len(generations)} "
                f"generations for {len(conversations)} conversations"
            )
        return generations

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(score) for score in self.reward.score(prompts, responses)]


def validate_run(prompts: Sequence[str], *, steps: int, chains: int, acceptance: str, beta: float) -> None:
    """Reject impossible runs before any work or write happens."""
    if not prompts:
        raise InvalidRequest("no prompts given: pass at least one prompt", param="prompts")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InvalidRequest("every prompt must be a non-empty string", param="prompts")
    if steps < 1:
        raise InvalidRequest(f"steps must be at least 1 (got {steps})", param="steps")
    if chains < 1:
        raise InvalidRequest(f"chains must be at least 1 (got {chains})", param="chains")
    if acceptance not in ACCEPTANCE_RULES:
        raise InvalidRequest(f"unknown acceptance {acceptance!r}; choose one of {', '.join(ACCEPTANCE_RULES)}", param="acceptance")
    if not beta > 0:
        raise InvalidRequest(f"beta must be positive (got {beta})", param="beta")
