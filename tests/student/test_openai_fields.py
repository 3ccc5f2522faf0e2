"""The OpenAI chat fields on the transformers runtime (real SmolLM2): logprobs, logit_bias and
penalties are honoured; structured output and tools are refused with a 400 naming the field;
nothing is silently ignored; every error, unknown routes included, is in the one shape."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

CLIENT_KEY = "test-client-key"  # tests/student/conftest.py configures it
HELLO = [{"role": "user", "content": "Say hello in five words."}]


def test_logprobs_match_the_content(openai_client):
    response = openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == response.usage.completion_tokens == 5
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen token is the most likely
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
    plain = openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


def test_streamed_logprobs(openai_client):
    chunks = list(openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=4, temperature=0, logprobs=True, stream=True))
    entries = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(entries) == 4 and "".join(t.token for t in entries) == text
    assert all(t.top_logprobs == [] for t in entries)  # top_logprobs not asked for


def test_logit_bias_and_penalties_change_the_answer(openai_client, student_runtime):
    forced = student_runtime.tokenizer.encode(" banana", add_special_tokens=False)[0]
    biased = openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=3, temperature=0, logit_bias={str(forced): 100})
    assert biased.choices[0].message.content == student_runtime.tokenizer.decode([forced] * 3)
    ask = [{"role": "user", "content": "Write the word cat ten times."}]
    plain = openai_client.chat.completions.create(model="base", messages=ask, max_tokens=16, temperature=0)
    penalised = openai_client.chat.completions.create(model="base", messages=ask, max_tokens=16, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    tokens = lambda r: student_runtime.tokenizer.encode(r.choices[0].message.content, add_special_tokens=False)  # noqa: E731
    assert len(set(tokens(penalised))) / len(tokens(penalised)) > len(set(tokens(plain))) / len(tokens(plain))


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),  # "auto": no tool parser for SmolLM2
    ({"tool_choice": "required"}, "tool_choice"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"logit_bias": {"banana": 5}}, "logit_bias"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"temperature": "0.5"}, "temperature"),  # a number is a JSON number, as on the teacher
    ({"presence_penalty": True}, "presence_penalty"),
    ({"n": "2"}, "n"),
])
def test_what_is_not_honoured_is_refused_by_name(registry_server, fields, param):
    url, _ = registry_server
    body = {"model": "base", "messages": HELLO, "max_tokens": 2, **fields}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param, r.json()


def test_tool_choice_none_and_harmless_fields_answer(openai_client, caplog):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with caplog.at_level(logging.WARNING, logger="services.student.serving_chat"):
        response = openai_client.chat.completions.create(
            model="base", messages=HELLO, max_tokens=3, temperature=0, tools=tools, tool_choice="none",
            response_format={"type": "text"}, user="u1", store=False, metadata={"k": "v"}, extra_body={"top_k": 5},
        )
    assert response.choices[0].message.content and response.choices[0].message.tool_calls is None
    assert "top_k" in caplog.text  # an unknown field is logged as ignored, the way vLLM does


def test_unknown_field_names_are_logged_bounded(registry_server, caplog):
    """A client's field names are its own text: a 1 MB name, or thousands of names, must not land
    whole in the log."""
    url, _ = registry_server
    huge = {"x" * 1_000_000: 1} | {f"extra_{i}": i for i in range(500)}
    with caplog.at_level(logging.WARNING, logger="services.student.serving_chat"):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": HELLO, "max_tokens": 2, **huge},
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    (line,) = [record.getMessage() for record in caplog.records if "ignored" in record.getMessage()]
    assert len(line) < 2000 and "(+481 more)" in line and "'extra_0'" in line, line[:300]


def test_too_many_headers_are_431_in_the_error_shape(registry_server):
    url, _ = registry_server
    headers = [("Authorization", f"Bearer {CLIENT_KEY}")] + [(f"x-filler-{i}", "1") for i in range(150)]
    for path in ("/healthz", "/v1/models"):
        r = httpx.get(f"{url}{path}", headers=headers)
        assert r.status_code == 431 and r.json()["error"]["type"] == "headers_too_large_error", r.text
        assert "max_header_count" in r.json()["error"]["message"]


def test_openai_client_reads_the_refusal(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=2, response_format={"type": "json_object"})
    assert refused.value.param == "response_format" and "transformers" in refused.value.message


def test_unknown_routes_and_wrong_methods_answer_in_the_one_shape(registry_server):
    url, _ = registry_server
    for method, path, status in (("GET", "/v1/nowhere", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405)):
        r = httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == status
        assert set(r.json()) == {"error"} and {"type", "message"} <= set(r.json()["error"]), r.text


def test_a_conversation_with_tool_calls_and_tool_answers(openai_client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    answer = openai_client.chat.completions.create(model="base", messages=messages, max_tokens=3, temperature=0)
    assert answer.choices[0].message.content
    call["function"]["arguments"] = "{not json"
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.chat.completions.create(model="base", messages=messages, max_tokens=3)
    assert bad.value.param == "messages"
