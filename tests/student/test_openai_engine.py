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


def _completions(url: str, admin_token: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_token}"}).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "dsc_student_completions"
               for sample in family.samples if sample.name.endswith("_total"))


def test_an_evaluation_asks_a_remote_teacher_over_http(registry_server, keys, student_helpers, tmp_path, model_store, model_path):
    """With DSC_ENGINE=openai the teacher of an evaluation (eval_teacher, an llm-judge reward) is the
    remote server, never a model loaded on the trainer: here the teacher's name, `base`, is one only
    the remote server (our student service) knows, so a local load would fail."""
    from services.trainer.evaluation_engines import run_evaluation
    from shared.distillation.config import EvaluationConfig
    from shared.tasks import preset_tasks

    url, _app = registry_server
    settings = student_helpers["student_settings"](tmp_path, model_store, engine="openai", teacher_model="base",
                                                   openai={"base_url": f"{url}/v1", "api_key": keys["client"]})
    before = _completions(url, keys["admin"])
    config = EvaluationConfig(eval_prompts=["Describe a quiet harbour.", "Describe a busy market."], samples=2, max_tokens=8,
                              teacher=True, collapse_check=False, examples=0)
    figures = run_evaluation(settings, config, preset_tasks()["sentiment"], base_path=model_path, merged_dir=model_path)
    assert set(figures["systems"]) == {"base", "student", "teacher"}, figures["systems"]
    assert all("teacher" in row for row in figures["per_prompt"]) and len(figures["per_prompt"]) == 2
    # the chain's three generations (answer, critique, revision) per answer went over HTTP
    assert _completions(url, keys["admin"]) - before >= 3 * 2 * 2
