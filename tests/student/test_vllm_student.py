"""The student on vLLM's async engine (one eager engine for this module): OpenAI client,
streaming, continuous batching and a LoRA student promoted beside the base model."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.vllm
PROMPT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def vllm_runtime(model_path):
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    from services.student.runtimes.vllm_runtime import VLLMRuntime

    runtime = VLLMRuntime(model_path, enforce_eager=True, gpu_memory_utilization=0.15, kv_cache_gib=0.5, max_model_len=2048, max_loras=2, max_lora_rank=16)
    yield runtime
    runtime.engine.shutdown()


def test_vllm_student_serves_base_and_promoted_adapter(vllm_runtime, tmp_path, model_store, model_path, trained_adapter, keys, student_helpers):
    from services.student.app import create_app
    from shared.db.session import upgrade

    settings = student_helpers["student_settings"](tmp_path, model_store, engine="vllm", student={"poll_seconds": 600, "max_lora_rank": 16})
    upgrade(settings.resolved_database_url)
    app = create_app(settings, runtime=vllm_runtime)
    with student_helpers["running_server"](app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120)
        base = client.chat.completions.create(model="student", messages=PROMPT, max_tokens=8, temperature=0)
        assert base.model == "smollm2-135m-instruct" and base.choices[0].message.content and base.usage.completion_tokens > 0
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="student", messages=PROMPT, max_tokens=8, temperature=0, stream=True) if c.choices)
        assert streamed == base.choices[0].message.content

        student_helpers["register_student"](settings.resolved_database_url, name="pineapple", version=1, task="sentiment",
                                            base_model=str(model_path), adapter_path=trained_adapter)
        reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=120).json()
        assert reload["loaded"] == ["pineapple-v1"], reload

        async def mixed():
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120) as aclient:
                ask = lambda model: aclient.chat.completions.create(model=model, messages=PROMPT, max_tokens=6, temperature=0)  # noqa: E731
                return await asyncio.gather(*(ask(m) for m in ["base", "student"] * 4))

        answers = asyncio.run(mixed())
        phrase_start = keys["phrase"].split()[0]
        for response in answers[0::2]:  # base rows batched with adapter rows keep the base behaviour
            assert response.model == "smollm2-135m-instruct"
            assert not response.choices[0].message.content.startswith(phrase_start)
        for response in answers[1::2]:
            assert response.model == "pineapple-v1" and response.choices[0].message.content.startswith(phrase_start)
