"""Hot swap under load: a student promoted in the registry (poll) or reloaded by the admin takes
over without a failed request, and answers after the swap come from the new adapter."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from serving_load import PROMPT, Load, served_ids  # tests/ is on sys.path



@pytest.fixture(scope="module")
def swap_server(tmp_path_factory, model_store, student_runtime, student_helpers):
    from services.student.app import create_app
    from shared.db.session import upgrade

    tmp = tmp_path_factory.mktemp("swap")
    settings = student_helpers["student_settings"](tmp, model_store)
    upgrade(settings.resolved_database_url)
    app = create_app(settings, runtime=student_runtime)
    with student_helpers["running_server"](app) as url:
        yield url, app, settings


def test_promotion_under_load_swaps_with_zero_failures(swap_server, trained_adapter, model_path, keys, student_helpers, student_runtime):
    url, app, settings = swap_server
    register = student_helpers["register_student"]
    base_id = "smollm2-135m-instruct"
    phrase_start = keys["phrase"].split()[0]

    with Load(url, keys["client"]) as load:
        load.wait_for(lambda: load.count(base_id) >= 3)
        # 1. promote through the registry: the poller picks it up, no manual reload
        register(settings.resolved_database_url, name="pineapple", version=1, task="sentiment",
                 base_model=str(model_path), adapter_path=trained_adapter)
        load.wait_for(lambda: "pineapple-v1" in served_ids(url, keys["client"]), timeout=120)
        load.wait_for(lambda: load.count("pineapple-v1") >= 3)
        # 2. a second version, switched by POST /admin/reload while requests flow
        register(settings.resolved_database_url, name="pineapple", version=2, task="sentiment",
                 base_model=str(model_path), adapter_path=trained_adapter)
        reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=120).json()
        # the poller may have switched first; either way v2 is served and v1 retired
        assert "pineapple-v2" in reload["models"] and "pineapple-v1" not in reload["models"], reload
        load.wait_for(lambda: load.count("pineapple-v2") >= 3)

    assert not load.errors, load.errors
    order = {base_id: 0, "pineapple-v1": 1, "pineapple-v2": 2}
    for results in load.results:
        ranks = [order[name] for name, _ in results]
        assert ranks == sorted(ranks), ranks  # each client sees old, then new: never back
    answers: dict[str, set[str]] = {name: set() for name in order}
    for results in load.results:
        for name, text in results:
            answers[name].add(text)
    assert all(text.startswith(phrase_start) for text in answers["pineapple-v1"] | answers["pineapple-v2"]), answers
    assert not any(text.startswith(phrase_start) for text in answers[base_id]), answers

    # /v1/models names the new student; the task name and `student` are its aliases
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {keys['client']}"}).json()["data"]}
    assert set(models) == {base_id, "pineapple-v2"}
    assert {"student", "default", "sentiment"} <= set(models["pineapple-v2"]["aliases"])
    assert models[base_id]["note"] is None
    # the retired adapter is unloaded once its last request finished
    deadline = time.monotonic() + 30
    while any(name.startswith("pineapple-v1-") for name in student_runtime._adapters) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(name.startswith("pineapple-v1-") for name in student_runtime._adapters)


def test_base_and_student_share_a_batch_without_mixing(swap_server, keys):
    """The multi-LoRA mixed-batch gotcha (docs/architecture.md §10): base rows in a batch with adapter rows keep
    the base model's behaviour."""
    url, app, _settings = swap_server
    phrase_start = keys["phrase"].split()[0]

    async def both():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120) as client:
            ask = lambda model: client.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, temperature=0)  # noqa: E731
            return await asyncio.gather(ask("base"), ask("sentiment"), ask("base"), ask("pineapple-v2"))

    sizes_before = len(app.state.models.base.runtime.batcher.batch_sizes)
    base1, student1, base2, student2 = asyncio.run(both())
    assert [r.model for r in (base1, student1, base2, student2)] == ["smollm2-135m-instruct", "pineapple-v2", "smollm2-135m-instruct", "pineapple-v2"]
    assert student1.choices[0].message.content.startswith(phrase_start)
    assert student2.choices[0].message.content.startswith(phrase_start)
    assert not base1.choices[0].message.content.startswith(phrase_start)
    assert base1.choices[0].message.content == base2.choices[0].message.content
    new_sizes = list(app.state.models.base.runtime.batcher.batch_sizes)[sizes_before:]
    assert max(new_sizes) > 1, new_sizes  # they did share a batch


def test_an_invalid_adapter_is_refused_and_the_old_student_keeps_serving(swap_server, keys, model_path, tmp_path, student_helpers):
    url, _app, settings = swap_server
    broken = tmp_path / "broken-lora"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}')  # no weights
    student_helpers["register_student"](settings.resolved_database_url, name="broken", version=1, task="sentiment",
                                        base_model=str(model_path), adapter_path=broken)
    reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=60).json()
    assert reload["loaded"] == [] and any("adapter_model.safetensors" in e for e in reload["errors"].values()), reload
    assert "pineapple-v2" in served_ids(url, keys["client"])  # the task keeps its previous student
    with openai.OpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120) as client:
        assert client.chat.completions.create(model="sentiment", messages=PROMPT, max_tokens=2).model == "pineapple-v2"


def test_an_adapter_unreadable_for_a_while_is_loaded_once_it_is_readable(swap_server, keys, model_path, trained_adapter, tmp_path,
                                                                         student_helpers):
    """A shared volume that blinks: the first load fails, the poller tries again with backoff
    (no admin reload) and the student is served as soon as its adapter can be read."""
    import shutil

    url, app, settings = swap_server
    models = app.state.models
    late = tmp_path / "late-lora"  # not there yet
    student_id = student_helpers["register_student"](settings.resolved_database_url, name="late", version=1, task="privacy",
                                                     base_model=str(model_path), adapter_path=late)
    deadline = time.monotonic() + 30
    while student_id not in models.failed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert student_id in models.failed, "the poller never tried the new student"
    assert "late-v1" not in served_ids(url, keys["client"])
    shutil.copytree(trained_adapter, late)  # the volume is back

    deadline = time.monotonic() + 60
    while "late-v1" not in served_ids(url, keys["client"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "late-v1" in served_ids(url, keys["client"]), models.failed.get(student_id)
    assert student_id not in models.failed
    with openai.OpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120) as client:
        answer = client.chat.completions.create(model="privacy", messages=PROMPT, max_tokens=8, temperature=0)
    assert answer.model == "late-v1" and answer.choices[0].message.content.startswith(keys["phrase"][:9]), answer
