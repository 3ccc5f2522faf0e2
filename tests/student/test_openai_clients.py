"""Real OpenAI clients that no one here wrote, against one student on vLLM's engine (real SmolLM2):
the official `openai` SDK (sync, async, streaming, `.parse()`), langchain-openai's ChatOpenAI and
litellm; structured output, logprobs, penalties and forced tool calls through vLLM."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx

import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.vllm
HELLO = [{"role": "user", "content": "Say hello."}]
CITY = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                       "required": ["city"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}


class Answer(BaseModel):
    """A short answer."""

    answer: str = Field(max_length=12)
    sure: bool


@pytest.fixture(scope="module")
def student(tmp_path_factory, model_store, model_path, keys, student_helpers):
    """One student on vLLM for the whole module: (base URL, client key, runtime)."""
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    from services.student.app import create_app
    from services.student.runtimes.vllm_runtime import VLLMRuntime
    from shared.db.session import upgrade

    runtime = VLLMRuntime(model_path, enforce_eager=True, gpu_memory_utilization=0.15, kv_cache_gib=0.5, max_model_len=2048, max_loras=2, max_lora_rank=16)
    try:
        settings = student_helpers["student_settings"](tmp_path_factory.mktemp("student"), model_store, engine="vllm", student={"poll_seconds": 600})
        upgrade(settings.resolved_database_url)
        with student_helpers["running_server"](create_app(settings, runtime=runtime)) as url:
            yield f"{url}/v1", keys["client"], runtime
    finally:
        runtime.engine.shutdown()


@pytest.fixture(scope="module")
def client(student):
    url, key, _ = student
    with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120) as client:
        yield client


def test_openai_structured_output(client):
    answer = client.chat.completions.parse(model="base", messages=HELLO, max_tokens=40, temperature=0, response_format=Answer)
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Answer) and answer.choices[0].finish_reason == "stop"
    mode = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Give a JSON object with your name."}],
                                          max_tokens=48, temperature=0, response_format={"type": "json_object"})
    if mode.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(mode.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert mode.choices[0].message.content.lstrip().startswith("{")


def test_openai_logprobs_penalties_and_logit_bias(client, student):
    tokenizer = student[2].tokenizer
    response = client.chat.completions.create(model="base", messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    assert len(choice.logprobs.content) == 4 and "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        # greedy: the chosen token is among the most likely (ties between two are ranked either way)
        assert len(token.top_logprobs) == 2 and token.token in [t.token for t in token.top_logprobs]
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-4)
    chunks = list(client.chat.completions.create(model="base", messages=HELLO, max_tokens=4, temperature=0, logprobs=True, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in choice.logprobs.content]
    forced = tokenizer.encode(" banana", add_special_tokens=False)[0]
    biased = client.chat.completions.create(model="base", messages=HELLO, max_tokens=3, temperature=0, logit_bias={str(forced): 100})
    assert biased.choices[0].message.content == tokenizer.decode([forced] * 3)
    ask = [{"role": "user", "content": "Write the word cat ten times."}]
    plain = client.chat.completions.create(model="base", messages=ask, max_tokens=16, temperature=0)
    penalised = client.chat.completions.create(model="base", messages=ask, max_tokens=16, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content


def test_openai_forced_tool_calls(client):
    named = client.chat.completions.create(model="base", messages=CITY, max_tokens=32, temperature=0, tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = named.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(model="base", messages=CITY, max_tokens=48, temperature=0, tools=[WEATHER, TIME],
                                                 tool_choice="required", stream=True))
    calls = [d for c in chunks if c.choices and c.choices[0].delta.tool_calls for d in c.choices[0].delta.tool_calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(calls[0].function.arguments), dict)
    with pytest.raises(openai.BadRequestError) as auto:
        client.chat.completions.create(model="base", messages=CITY, max_tokens=8, tools=[WEATHER])
    assert auto.value.param == "tool_choice"


def test_openai_async_streaming(student):
    url, key, _ = student

    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=120) as aclient:
            plain = await aclient.chat.completions.create(model="base", messages=HELLO, max_tokens=6, temperature=0)
            stream = await aclient.chat.completions.create(model="base", messages=HELLO, max_tokens=6, temperature=0, stream=True,
                                                           stream_options={"include_usage": True})
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content, text

    plain, streamed = asyncio.run(run())
    assert plain and streamed == plain


def test_langchain_chat_openai(student):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    url, key, _ = student
    chat = ChatOpenAI(model="base", base_url=url, api_key=key, max_tokens=8, temperature=0, max_retries=0, timeout=120)
    said = chat.invoke("Say hello.")
    assert said.content and said.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(chunk.content for chunk in chat.stream("Say hello.")) == said.content
    batch = chat.batch(["Say hello.", "Say hello."])
    # Two answers, one per input. Not compared with `said`: greedy decoding in bfloat16 is not batch
    # invariant (two rows decoded together may pick another token than one alone), in vLLM too.
    assert len(batch) == 2 and all(m.content and m.response_metadata["finish_reason"] in ("stop", "length") for m in batch)

    structured = ChatOpenAI(model="base", base_url=url, api_key=key, max_tokens=40, temperature=0, max_retries=0).with_structured_output(Answer)
    assert isinstance(structured.invoke("Is the sky blue?"), Answer)

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    tools_chat = ChatOpenAI(model="base", base_url=url, api_key=key, max_tokens=32, temperature=0, max_retries=0)
    called = tools_chat.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather" and "city" in called.tool_calls[0]["args"]


def test_litellm_completion(student):
    import litellm

    url, key, _ = student
    response = litellm.completion(model="openai/base", api_base=url, api_key=key, messages=HELLO, max_tokens=6, temperature=0)
    assert response.choices[0].message.content and response.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in litellm.completion(
        model="openai/base", api_base=url, api_key=key, messages=HELLO, max_tokens=6, temperature=0, stream=True))
    assert streamed == response.choices[0].message.content


def test_an_engine_abort_is_an_error_never_a_cut_stream(student):
    """vLLM ends every request in flight with finish_reason "abort" when its scheduler is paused
    that way: a stream then ends with an error event and [DONE], a plain request with a JSON error."""
    url, key, runtime = student
    engine = runtime.engine
    loop = engine.output_handler.get_loop()  # the server's event loop, where the engine delivers outputs

    def abort_all() -> None:
        asyncio.run_coroutine_threadsafe(engine.pause_generation(mode="abort", clear_cache=False), loop).result(60)
        asyncio.run_coroutine_threadsafe(engine.resume_generation(), loop).result(60)

    body = {"model": "base", "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 64, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"}
    events = []
    with httpx.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}, headers=headers, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    abort_all()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "engine_error" and "abort" in error["message"]

    answers = []
    thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=120)))
    thread.start()
    deadline = time.monotonic() + 60
    while engine.get_num_unfinished_requests() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    abort_all()
    thread.join(120)
    assert answers[0].status_code == 502 and answers[0].json()["error"]["type"] == "engine_error", answers[0].text
    after = httpx.post(f"{url}/chat/completions", json={**body, "max_tokens": 2}, headers=headers, timeout=120)
    assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] == "length"
