"""The OpenAI-compatible HTTP engine (a remote teacher) against a real OpenAI-compatible server:
our own student service, serving the real SmolLM2."""

from __future__ import annotations

import pytest

from shared.engines.base import SamplingParams
from shared.engines.openai_engine import OpenAIEngine
from shared.errors import EngineError
from shared.rewards import build_reward
from shared.critique_revise import Sampler


def test_openai_engine_generates_a_batch_and_drives_the_sampler(registry_server, keys):
    url, _app = registry_server
    engine = OpenAIEngine(f"{url}/v1", "base", api_key=keys["client"], concurrency=4)
    try:
        conversations = [[{"role": "user", "content": f"Name a colour. ({i})"}] for i in range(3)]
        out = engine.generate(conversations, SamplingParams(temperature=0.0, max_tokens=8))
        assert len(out) == 3 and all(g.text and g.completion_tokens > 0 and g.prompt_tokens > 0 for g in out)

        sampler = Sampler(engine, build_reward({"type": "vader"}), critique_request="Critique your answer.", revision_request="Rewrite it kindly.")
        chains = sampler.run(["Write a harsh review of a film."], steps=1, chains=2, params=SamplingParams(max_tokens=12, seed=1))
        assert len(chains) == 2 and all(len(chain.steps) == 1 for chain in chains)
    finally:
        engine.close()


def test_openai_engine_turns_remote_errors_into_engine_errors(registry_server):
    url, _app = registry_server
    engine = OpenAIEngine(f"{url}/v1", "base", api_key="wrong-key")
    try:
        with pytest.raises(EngineError, match="401"):
            engine.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=4))
    finally:
        engine.close()
