"""The critique→revise sampler (docs/architecture.md §1), batched across every chain of a call.

For prompt c, chain state x_t starts at x_0 ~ p(x | c). Each step:
    critique  k_t ~ p(k | c, x_t, critique request)
    revision  x'  ~ p(x | c, x_t, k_t, revision request)
    accept    x_{t+1} = x' or x_t, by the acceptance rule on the reward r
Targets the tilted posterior p(x | c, r) ∝ p(x | c) · exp(r(x) / β).

Scheduling is the only extra idea: many chains share the engine at once. On a continuous-batching
engine each chain advances on its own (no barrier per phase); on a phase-batched engine all chains
advance together, one call per phase, and the reward scores a whole step at once.

This module is the algorithm only; turning a request into a run and storing its chains is
`shared.sampling_run`.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from shared.engines.base import ContinuousEngine, Conversation, Engine, Generation, SamplingParams, request_seed
from shared.errors import EngineError, InvalidRequest
from shared.rewards.base import RewardModel

Acceptance = Literal["improve", "mh", "always"]
ACCEPTANCE_RULES: tuple[str, ...] = ("improve", "mh", "always")
# chains: each chain advances on its own where the engine schedules requests one by one (a
# ContinuousEngine; elsewhere phases); phases: all chains together, one engine call per phase.
Schedule = Literal["chains", "phases"]


@dataclass
class Step:
    critique: str
    revision: str
    reward: float
    accepted: bool
    truncated: bool = False  # the revision stopped at max_tokens, not at its end


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
    # Cut off at max_tokens rather than ended by the model: a student trained on such an answer
    # learns to stop mid-sentence (see docs/distillation.md, truncated answers).
    initial_truncated: bool = False
    final_truncated: bool = False

    @classmethod
    def start(cls, prompt_index: int, chain_index: int, prompt: str, answer: Generation, reward: float) -> "Chain":
        """A chain at its initial answer x_0."""
        truncated = answer.finish_reason == "length"
        return cls(prompt_index, chain_index, prompt, answer.text, reward, final_text=answer.text, final_reward=reward,
                   tokens=answer.completion_tokens, initial_truncated=truncated, final_truncated=truncated)

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

# Requests that end in the same engine step complete a moment apart; the pipeline gathers them
# until none has finished for GATHER_GAP_S (at most GATHER_MAX_S) so their next turns reach the
# engine together, as one prefill, instead of trickling into several steps.
GATHER_GAP_S, GATHER_MAX_S = 0.002, 0.02


class Sampler:
    """Runs chains for one task's critique and revision requests with one engine and reward.

    Two schedules, one result. "chains", on an engine that schedules each request on its own
    (`ContinuousEngine`: vLLM, a remote server): every chain advances on its own, each turn
    submitted the moment the one before it is done, and the reward scores only where a decision
    waits for it (`_Pipeline`). "phases", on any engine: all chains advance together, one call per
    phase (transformers runs only this). Request seeds and acceptance draws are per chain and per
    phase, so the schedule changes no draw."""

    def __init__(self, engine: Engine, reward: RewardModel, *, critique_request: str, revision_request: str,
                 schedule: Schedule = "chains") -> None:
        self.engine = engine
        self.reward = reward
        self.critique_request = critique_request
        self.revision_request = revision_request
        self.per_chain = schedule == "chains" and isinstance(engine, ContinuousEngine)

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
        # Chain order: prompt-major, so chain k of prompt i sits at i * chains + k.
        runs = [(i, k, prompt) for i, prompt in enumerate(prompts) for k in range(chains)]
        rule = _Rule(acceptance, beta, params.seed)
        report = progress or (lambda phase, done, total: None)
        if self.per_chain:
            return _Pipeline(self, runs, steps, rule, params, report).run()
        return self._run_phases(runs, steps, rule, params, report)

    def _run_phases(self, runs: list[tuple[int, int, str]], steps: int, rule: "_Rule", params: SamplingParams,
                    report: ProgressCallback) -> list[Chain]:
        total_phases = 1 + 2 * steps
        first = self._generate([self.answer_conversation(prompt) for _, _, prompt in runs], params, 0)
        first_rewards = self.score([prompt for _, _, prompt in runs], [gen.text for gen in first])
        state = [Chain.start(i, k, prompt, gen, reward) for (i, k, prompt), gen, reward in zip(runs, first, first_rewards)]
        report("initial", 1, total_phases)

        for t in range(steps):
            critique_turns = [self.critique_conversation(chain.prompt, chain.final_text) for chain in state]
            critiques = self._generate(critique_turns, params, 1 + 2 * t)
            report(f"critique {t + 1}", 2 + 2 * t, total_phases)
            revision_turns = [self.revision_conversation(turns, critique.text) for turns, critique in zip(critique_turns, critiques)]
            revisions = self._generate(revision_turns, params, 2 + 2 * t)
            rewards = self.score([chain.prompt for chain in state], [gen.text for gen in revisions])
            for position, (chain, critique, revision, reward) in enumerate(zip(state, critiques, revisions, rewards)):
                rule.step(chain, position, critique, revision, reward)
            report(f"revision {t + 1}", 3 + 2 * t, total_phases)
        return state

    @staticmethod
    def answer_conversation(prompt: str) -> Conversation:
        return [{"role": "user", "content": prompt}]

    def critique_conversation(self, prompt: str, answer: str) -> Conversation:
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": self.critique_request},
        ]

    def revision_conversation(self, critique_turns: Conversation, critique: str) -> Conversation:
        return critique_turns + [{"role": "assistant", "content": critique}, {"role": "user", "content": self.revision_request}]

    def _generate(self, conversations: list[Conversation], params: SamplingParams, phase: int) -> list[Generation]:
        seeded = phase_params(params, phase)
        generations = self.engine.generate(conversations, seeded)
        if len(generations) != len(conversations):  # a mis-paired answer would be stored as another prompt's
            raise EngineError(
                f"engine {getattr(self.engine, 'name', type(self.engine).__name__)} returned {len(generations)} "
                f"generations for {len(conversations)} conversations"
            )
        return generations

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(score) for score in self.reward.score(prompts, responses)]


def phase_params(params: SamplingParams, phase: int, position: int | None = None) -> SamplingParams:
    """The parameters of one phase's batch; with `position`, of that chain's one request, whose
    seed is then what the batch would have given it (shared.engines.base.request_seed)."""
    seed = _phase_seed(params.seed, phase)
    if position is not None:
        seed = request_seed(seed, position)
    return SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=seed, stop=params.stop)


class _Rule:
    """The acceptance step with one random stream per chain, so the order in which chains finish
    (which a continuous engine decides) never changes a draw."""

    def __init__(self, acceptance: Acceptance, beta: float, seed: int | None) -> None:
        self.acceptance, self.beta, self.seed = acceptance, beta, seed
        self._rngs: dict[int, random.Random] = {}

    def step(self, chain: Chain, position: int, critique: Generation, revision: Generation, reward: float) -> None:
        """Append one critique→revise step to `chain` and move it if the revision is accepted."""
        rng = self._rngs.setdefault(position, random.Random(None if self.seed is None else f"{self.seed}/{position}"))
        moved = bool(revision.text) and accept(self.acceptance, chain.final_reward, reward, self.beta, rng)
        truncated = revision.finish_reason == "length"
        chain.steps.append(Step(critique.text, revision.text, reward, moved, truncated))
        chain.tokens += critique.completion_tokens + revision.completion_tokens
        if moved:
            chain.final_text, chain.final_reward, chain.final_truncated = revision.text, reward, truncated


class _Pipeline:
    """One run on a ContinuousEngine: each chain has exactly one request in flight until it is
    done. The reward scores only when a decision waits for it: a revision before the last step
    (its score picks the answer the next critique sees) together with its chain's first answer;
    the last step's revisions and what they compete with are scored in one call at the end, when
    the engine has nothing left to do. Meanwhile scoring never competes with generation."""

    def __init__(self, sampler: Sampler, runs: list[tuple[int, int, str]], steps: int, rule: _Rule,
                 params: SamplingParams, report: ProgressCallback) -> None:
        self.sampler, self.engine = sampler, sampler.engine
        self.runs, self.steps, self.rule, self.params, self.report = runs, steps, rule, params, report
        self.chains: list[Chain | None] = [None] * len(runs)
        self.answers: dict[int, Generation] = {}  # first answers whose chain is not scored yet
        self.taken = [0] * len(runs)  # critique→revise steps each chain has finished generating
        self.critiques: dict[int, Generation] = {}
        self.last_steps: list[tuple[int, Generation, Generation]] = []  # decided at the end
        self.pending: dict[Future, tuple[int, str, Conversation]] = {}

    def run(self) -> list[Chain]:
        total, done = len(self.runs) * (1 + 2 * self.steps), 0
        try:
            for position, (_, _, prompt) in enumerate(self.runs):
                self._submit(position, "answer", 0, self.sampler.answer_conversation(prompt))
            while self.pending:
                wait(list(self.pending), return_when=FIRST_COMPLETED)
                finished = self._gather_finished()
                self._advance([(self.pending.pop(future), future.result()) for future in finished])
                done += len(finished)
                self.report("sampling", done, total)
        finally:
            for future in self.pending:  # an error, a stop or a close: abort what is still running
                future.cancel()
        self._decide(self.last_steps)
        return [chain for chain in self.chains if chain is not None]

    def _gather_finished(self) -> list[Future]:
        finished = [future for future in self.pending if future.done()]
        deadline = time.monotonic() + GATHER_MAX_S
        while time.monotonic() < deadline:
            time.sleep(GATHER_GAP_S)
            now = [future for future in self.pending if future.done()]
            if len(now) == len(finished):
                break
            finished = now
        return finished

    def _submit(self, position: int, kind: str, phase: int, conversation: Conversation) -> None:
        future = self.engine.submit(conversation, phase_params(self.params, phase, position))
        self.pending[future] = (position, kind, conversation)

    def _advance(self, results: list[tuple[tuple[int, str, Conversation], Generation]]) -> None:
        decide_now = []
        for (position, kind, conversation), generation in results:
            if kind == "answer":
                self.answers[position] = generation
                self._submit(position, "critique", 1, self.sampler.critique_conversation(self.runs[position][2], generation.text))
            elif kind == "critique":
                self.critiques[position] = generation
                self._submit(position, "revision", 2 + 2 * self.taken[position], self.sampler.revision_conversation(conversation, generation.text))
            else:
                self.taken[position] += 1
                step = (position, self.critiques.pop(position), generation)
                (self.last_steps if self.taken[position] == self.steps else decide_now).append(step)
        self._decide(decide_now)
        for position, _, _ in decide_now:
            chain = self.chains[position]
            self._submit(position, "critique", 1 + 2 * self.taken[position], self.sampler.critique_conversation(chain.prompt, chain.final_text))

    def _decide(self, steps: list[tuple[int, Generation, Generation]]) -> None:
        """Score the revisions of `steps` (and the first answers of chains not yet scored) in one
        reward call, then take each acceptance step."""
        if not steps:
            return
        starting = [position for position, _, _ in steps if self.chains[position] is None]
        texts = [self.answers[position].text for position in starting] + [revision.text for _, _, revision in steps]
        prompts = [self.runs[position][2] for position in starting] + [self.runs[position][2] for position, _, _ in steps]
        rewards = self.sampler.score(prompts, texts)
        for position, reward in zip(starting, rewards):
            self.chains[position] = Chain.start(*self.runs[position], self.answers.pop(position), reward)
        for (position, critique, revision), reward in zip(steps, rewards[len(starting):]):
            self.rule.step(self.chains[position], position, critique, revision, reward)


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
