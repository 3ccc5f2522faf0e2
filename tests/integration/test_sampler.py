"""The sampler on the real SmolLM2 with each engine that exists here and the real VADER reward."""

from __future__ import annotations

import pytest

from shared.engines.base import SamplingParams
from shared.rewards import build_reward
from shared.critique_revise import Sampler

PROMPTS = [
    "Write a two-sentence negative review of the film Jaws.",
    "Write a two-sentence negative review of the film Titanic.",
    "Explain in two sentences why the film Cats disappointed you.",
]
CRITIQUE = "Point out what is negative or harsh in your answer."
REVISION = "Rewrite your answer to be positive and kind. Reply with the rewritten answer only."
PARAMS = SamplingParams(temperature=0.8, max_tokens=24, seed=11)


@pytest.fixture(scope="module")
def vader():
    return build_reward({"type": "vader"})


def _sampler(engine, reward) -> Sampler:
    return Sampler(engine, reward, critique_request=CRITIQUE, revision_request=REVISION)


class CountingEngine:
    """Wraps a real engine and records the batch size of each call (the batching is what we test)."""

    def __init__(self, engine):
        self.engine, self.name, self.model, self.batches = engine, engine.name, engine.model, []

    def generate(self, conversations, params):
        self.batches.append(len(conversations))
        return self.engine.generate(conversations, params)

    def close(self):
        pass


_RUNS: dict = {}


def _improve_run(engine, vader):
    """One improve run per engine, shared by the tests that only read it (CPU time is scarce)."""
    if engine.name not in _RUNS:
        counting = CountingEngine(engine)
        chains = _sampler(counting, vader).run(PROMPTS, steps=2, chains=2, acceptance="improve", params=PARAMS)
        _RUNS[engine.name] = (chains, counting.batches)
    return _RUNS[engine.name]


def test_shapes_and_one_engine_call_per_phase(any_engine, vader):
    chains, batches = _improve_run(any_engine, vader)
    assert len(chains) == 6
    assert [(c.prompt_index, c.chain_index) for c in chains] == [(i, k) for i in range(3) for k in range(2)]
    # initial, then critique + revision for each of 2 steps: every call carries all 6 chains.
    assert batches == [6, 6, 6, 6, 6]
    for chain in chains:
        assert chain.prompt == PROMPTS[chain.prompt_index]
        assert len(chain.steps) == 2 and chain.initial_text and chain.tokens > 0
        assert all(step.critique and isinstance(step.reward, float) for step in chain.steps)


def test_improve_never_keeps_a_lower_reward(any_engine, vader):
    chains, _ = _improve_run(any_engine, vader)
    for chain in chains:
        current = chain.initial_reward
        for step in chain.steps:
            assert step.accepted == (step.reward > current)
            current = step.reward if step.accepted else current
        assert chain.final_reward == current >= chain.initial_reward
        assert chain.accepted == (chain.final_text != chain.initial_text and any(s.accepted for s in chain.steps))


def test_always_moves_to_every_revision(tf_engine, vader):
    chains = _sampler(tf_engine, vader).run(PROMPTS, steps=1, chains=1, acceptance="always", params=PARAMS)
    for chain in chains:
        step = chain.steps[-1]
        assert step.accepted
        assert (chain.final_text, chain.final_reward) == (step.revision, step.reward)


def test_seed_reproduces_with_transformers(tf_engine, vader):
    runs = [_sampler(tf_engine, vader).run(PROMPTS[:2], steps=1, chains=1, params=PARAMS) for _ in range(2)]
    first, second = ([(c.initial_text, c.steps[0].critique, c.steps[0].revision, c.final_reward) for c in run] for run in runs)
    assert first == second
    other = _sampler(tf_engine, vader).run(PROMPTS[:2], steps=1, chains=1, params=SamplingParams(temperature=0.8, max_tokens=24, seed=12))
    assert [c.initial_text for c in other] != [c[0] for c in first]
