"""The official `openai` client against a running student service (transformers, real SmolLM2)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import openai
import pytest

CLIENT_KEY = "test-client-key"  # tests/student/conftest.py configures these
ADMIN_TOKEN = "test-admin-token"

HELLO = [{"role": "user", "content": "Say hello in five words."}]


def test_chat_completion(openai_client):
    response = openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert response.model == "smollm2-135m-instruct"  # no student promoted: the base model answers
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(openai_client):
    ask = lambda **kw: openai_client.chat.completions.create(model="base", messages=HELLO, max_tokens=6, **kw)  # noqa: E731
    assert ask(temperature=0).choices[0].message.content == ask(temperature=0).choices[0].message.content
    first, second = ask(temperature=1.0, seed=7, n=2), ask(temperature=1.0, seed=7, n=2)
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1]


def test_streamed_completion(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model="student", messages=HELLO, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip()
    assert finishes in (["stop"], ["length"])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # the same text as without streaming
    plain = openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=8, temperature=0)
    assert plain.choices[0].message.content == text


def test_stream_ends_with_done(registry_server):
    url, _ = registry_server
    body = {"model": "student", "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_models_list(openai_client):
    models = {m.id: m for m in openai_client.models.list()}
    base = models["smollm2-135m-instruct"]
    assert base.object == "model"
    assert base.model_extra["dsc_kind"] == "base"
    assert "no student promoted" in base.model_extra["note"]
    assert {"student", "default", "base"} <= set(base.model_extra["aliases"])


def test_errors_are_the_clients_own_types(registry_server, openai_client):
    url, _ = registry_server
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_client.chat.completions.create(model="gpt-9", messages=HELLO, max_tokens=4)
    assert unknown.value.code == "model_not_found" and "gpt-9" in unknown.value.message
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="student", messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as negative:
        openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=-1)
    assert negative.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as too_long:
        openai_client.chat.completions.create(model="student", messages=[{"role": "user", "content": "word " * 400}], max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="n is 9"):
        openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=4, n=9)
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="student", messages=HELLO, temperature=5)
    bad_key = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    # raw HTTP: bad bodies are OpenAI-style 4xx, never 500
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    message = b'"messages": [{"role": "user", "content": "hi"}]'
    for body, param in (
        (b"{not json", None), (b"[]", None), (b'{"model": "student"}', "messages"),
        (b'{"model": "student", "messages": [{"role": "wizard", "content": "x"}]}', "messages"),
        (b'{"model": "student", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),  # a lone surrogate
        (b'{"model": "student", ' + message + b', "max_tokens": true}', "max_tokens"),
        (b'{"model": "student", ' + message + b', "temperature": NaN}', "temperature"),
        (b'{"model": "student", ' + message + b', "seed": 18446744073709551616}', "seed"),  # beyond int64, as vLLM bounds it
        # a JSON Schema no engine could build a grammar from: the client's error, named, not a 502
        (b'{"model": "student", ' + message + b', "response_format": {"type": "json_schema", "json_schema": '
         b'{"name": "x", "schema": {"type": "strng"}}}}', "response_format"),
        (b'{"model": "student", ' + message + b', "response_format": {"type": "json_schema", "json_schema": '
         b'{"name": "x", "schema": {"type": "string", "pattern": "(unclosed"}}}}', "response_format"),
        (b'{"model": "student", ' + message + b', "tools": [{"type": "function", "function": {"name": "f", '
         b'"parameters": {"$ref": "#/$defs/Missing"}}}]}', "tools"),
    ):
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
        if param:
            assert r.json()["error"]["param"] == param, (body, r.json())
    # a lone surrogate in the model name is quoted back in the "not found" message, escaped: still a 404
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "\\udc80", ' + message + b'}',
                   headers={**headers, "content-type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and "\\udc80" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{url}/admin/reload", headers=headers)
    assert r.status_code == 403


def test_overload_answers_429_with_retry_after(registry_server, openai_client):
    url, app = registry_server
    chat = app.state.chat
    limit = chat.settings.student.max_pending
    chat.settings.student.max_pending = 2
    try:
        async def burst():
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120) as client:
                calls = [client.chat.completions.create(model="student", messages=HELLO, max_tokens=4) for _ in range(6)]
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(burst())
    finally:
        chat.settings.student.max_pending = limit
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert limited and all(not isinstance(r, Exception) or isinstance(r, openai.RateLimitError) for r in results)
    assert limited[0].response.headers["retry-after"] == "1"


def test_sixteen_concurrent_requests_are_batched(registry_server, student_runtime):
    url, _ = registry_server
    student_runtime.batcher.batch_sizes.clear()

    async def sixteen():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=300) as client:
            calls = [
                client.chat.completions.create(model="student", messages=[{"role": "user", "content": f"Name a colour. ({i})"}],
                                               max_tokens=6, temperature=0.7, seed=i)
                for i in range(16)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(sixteen())
    assert all(not isinstance(r, Exception) for r in results), results
    assert all(r.choices[0].message.content for r in results)
    sizes = list(student_runtime.batcher.batch_sizes)
    assert sum(sizes) == 16 and max(sizes) > 1, sizes
    assert len(sizes) <= 4, sizes  # gathered, not one at a time


def test_client_disconnect_cancels_generation(registry_server):
    url, app = registry_server
    chat = app.state.chat
    body = {"model": "student", "messages": HELLO, "max_tokens": 64, "temperature": 0.9, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first real token: hang up
    deadline = time.monotonic() + 20
    while chat.pending and time.monotonic() < deadline:
        time.sleep(0.1)
    assert chat.pending == 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'outcome="cancelled"' in metrics


def _chat_requests_seen(app) -> float:
    """Chat completion requests the service has finished handling, whatever their status."""
    return sum(sample.value for metric in app.state.registry.collect() if metric.name == "dsc_http_requests"
               for sample in metric.samples if sample.name.endswith("_total") and sample.labels["route"] == "/v1/chat/completions")


def test_client_gone_before_the_first_byte_frees_its_slot(registry_server):
    """Streamed requests whose clients hang up right after sending, before any byte of the answer:
    once the service has handled them, none of their sequences stays counted against the queue."""
    url, app = registry_server
    chat = app.state.chat
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps({"model": "student", "messages": HELLO, "max_tokens": 64, "stream": True}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    seen = _chat_requests_seen(app)
    for _ in range(5):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 60
    while _chat_requests_seen(app) < seen + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _chat_requests_seen(app) == seen + 5, "the service did not finish handling the abandoned requests"
    assert chat.pending == 0
    answer = httpx.post(f"{url}/v1/chat/completions", json={"model": "student", "messages": HELLO, "max_tokens": 2},
                        headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60)
    assert answer.status_code == 200


def _chat_statuses(app) -> dict[str, float]:
    return {sample.labels["status"]: sample.value for metric in app.state.registry.collect() if metric.name == "dsc_http_requests"
            for sample in metric.samples if sample.name.endswith("_total") and sample.labels["route"] == "/v1/chat/completions"}


def test_a_client_gone_from_a_non_streaming_call_is_no_server_error(registry_server, student_runtime, caplog):
    """The client hangs up while its (non-streaming) answer is generated: the generation is
    cancelled, the request counts as 499 (client closed), not 500, and no traceback is logged."""
    url, app = registry_server
    host, port = url.removeprefix("http://").split(":")
    # Special tokens banned, so the answer runs to its full 64 tokens (~0.4 s here) and the client
    # hangs up as soon as it is admitted: a fixed 0.5 s wait once saw the answer finish first.
    no_end = {str(token): -100 for token in student_runtime.tokenizer.all_special_ids}
    payload = json.dumps({"model": "student", "messages": HELLO, "max_tokens": 64, "temperature": 0.9,
                          "logit_bias": no_end}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    before = _chat_statuses(app)
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 30
        while app.state.chat.pending == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.chat.pending == 1, "the request was never admitted"
    deadline = time.monotonic() + 60
    while _chat_statuses(app).get("499", 0) == before.get("499", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _chat_statuses(app)
    assert after.get("499", 0) == before.get("499", 0) + 1 and after.get("500", 0) == before.get("500", 0), (before, after)
    assert not [record for record in caplog.records if record.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert app.state.chat.pending == 0


def test_health_ready_metrics(registry_server, openai_client):
    url, _ = registry_server
    openai_client.chat.completions.create(model="student", messages=HELLO, max_tokens=2)
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("dsc_http_requests_total", "dsc_student_completion_seconds", "dsc_student_time_to_first_token_seconds",
                 "dsc_student_tokens_per_second", "dsc_student_queue_depth", "dsc_student_active_model", "dsc_student_batch_size"):
        assert name in metrics, name
    assert 'dsc_student_active_model{kind="base",model="smollm2-135m-instruct"} 1.0' in metrics


def test_admin_reload_needs_the_admin_token(registry_server):
    url, _ = registry_server
    r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and "smollm2-135m-instruct" in r.json()["models"]
    assert httpx.post(f"{url}/admin/reload").status_code == 401


def test_a_completion_that_names_no_max_tokens_gets_the_default(registry_server, openai_client):
    _, app = registry_server
    student = app.state.chat.settings.student
    default = student.default_max_tokens
    student.default_max_tokens = 3  # DSC_STUDENT_DEFAULT_MAX_TOKENS
    try:
        response = openai_client.chat.completions.create(model="student", messages=HELLO, temperature=0)
    finally:
        student.default_max_tokens = default
    assert response.usage.completion_tokens <= 3
