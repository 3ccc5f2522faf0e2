"""Students served from merged weights on vLLM (student.serve_students_as=merged, the default on
vLLM-CPU): the service merges a LoRA student into plain weights once, serves it in an engine of its
own beside the LoRA-free base engine, hot-swaps under load without a failed request, and holds no
more merged engines than student.max_merged however many tasks have an active student."""

from __future__ import annotations

import time

import httpx
import openai
import psutil
import pytest

from serving_load import PROMPT, Load, served_ids  # tests/ is on sys.path

pytestmark = pytest.mark.vllm
BASE_ID = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def merged_server(tmp_path_factory, model_path, student_helpers):
    """A student service that builds its own vLLM runtimes (no runtime handed in), students merged,
    at most two merged engines, each engine with a small KV cache."""
    from services.student.app import create_app
    from shared.db.session import upgrade
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    tmp = tmp_path_factory.mktemp("merged")
    settings = student_helpers["student_settings"](
        tmp, tmp / "store", engine="vllm", student_base_model=str(model_path),
        student={"poll_seconds": 0.5, "serve_students_as": "merged", "max_merged": 2, "max_lora_rank": 16},
        vllm={"enforce_eager": True, "kv_cache_gib": 0.25},
    )
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    app.state.engines_before = {p.pid for p in engine_processes()}  # the session's other engines (shared fixtures)
    with student_helpers["running_server"](app) as url:
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the student service did not get ready"
            time.sleep(1)
        yield url, app, settings


def engine_processes(app=None) -> list[psutil.Process]:
    """vLLM engine-core processes under this test process (one per engine); with `app`, only those
    its student service started."""
    before = getattr(app.state, "engines_before", set()) if app is not None else set()
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before and _live_engine(p)]


def _live_engine(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE and (
            process.name().startswith("VLLM::EngineCore") or " ".join(process.cmdline()).startswith("VLLM::EngineCore"))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # gone, or exited and not yet reaped: no engine any more
        return False


def test_the_base_engine_has_no_lora_and_a_merged_student_hot_swaps_under_load(merged_server, trained_adapter, model_path, keys, student_helpers):
    url, app, settings = merged_server
    models = app.state.models
    assert models.base.runtime.serves_adapters is False  # LoRA off: the base model runs at full speed
    register = student_helpers["register_student"]
    phrase_start = keys["phrase"].split()[0]

    with Load(url, keys["client"], workers=3) as load:
        load.wait_for(lambda: load.count(BASE_ID) >= 3)
        first = register(settings.resolved_database_url, name="pineapple", version=1, task="sentiment",
                         base_model=str(model_path), adapter_path=trained_adapter)
        load.wait_for(lambda: "pineapple-v1" in served_ids(url, keys["client"]), timeout=240)
        load.wait_for(lambda: load.count("pineapple-v1") >= 3)
        register(settings.resolved_database_url, name="pineapple", version=2, task="sentiment",
                 base_model=str(model_path), adapter_path=trained_adapter)
        load.wait_for(lambda: load.count("pineapple-v2") >= 3, timeout=300)

    assert not load.errors, load.errors
    order = {BASE_ID: 0, "pineapple-v1": 1, "pineapple-v2": 2}
    for results in load.results:
        ranks = [order[name] for name, _ in results]
        assert ranks == sorted(ranks), ranks  # each client sees old, then new: never back
    answers = {name: {text for results in load.results for n, text in results if n == name} for name in order}
    assert all(text.startswith(phrase_start) for text in answers["pineapple-v1"] | answers["pineapple-v2"]), answers
    assert not any(text.startswith(phrase_start) for text in answers[BASE_ID]), answers
    # merged once into the model store, keyed by the student; served by an engine of its own
    assert (settings.resolved_model_store / "merged" / first / "config.json").is_file()
    student = models.students[next(iter(models.students))]
    assert student.owns_runtime and student.adapter is None and student.runtime is not models.base.runtime
    # the retired v1 engine is closed: the base engine and v2's remain
    deadline = time.monotonic() + 60
    while len(engine_processes(app)) > 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(engine_processes(app)) == 2, [p.cmdline() for p in engine_processes(app)]


def test_merged_engines_stay_within_max_merged_with_three_tasks_active(merged_server, trained_adapter, model_path, keys, student_helpers):
    url, app, settings = merged_server
    register = student_helpers["register_student"]
    for task in ("safety", "privacy"):  # sentiment's student is active from the test above
        register(settings.resolved_database_url, name=f"{task}-student", version=1, task=task,
                 base_model=str(model_path), adapter_path=trained_adapter)
    reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=300).json()
    served = [name for name in served_ids(url, keys["client"]) if name != BASE_ID]
    assert len(served) == 2, (served, reload)  # two merged students, the limit
    ((refused_id, refused),) = reload["errors"].items()
    assert "student.max_merged = 2" in refused and "DSC_STUDENT_MAX_MERGED" in refused, refused
    assert len(engine_processes(app)) == 3  # base + two merged students, never one per active student
    with openai.OpenAI(base_url=f"{url}/v1", api_key=keys["client"], max_retries=0, timeout=120) as client:
        for model in served:
            answer = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=6, temperature=0)
            assert answer.choices[0].message.content.startswith(keys["phrase"].split()[0])
    # /readyz names the student that is not served (the reason is in the reload answer, the log and the registry)
    ready = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {keys['admin']}"}).json()
    assert ready["not_loaded"] == [refused_id], ready
