"""The arguments every vLLM engine of dSC starts with: the KV cache sizing, its processes, its compile cache."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

from shared.engines.vllm_options import CPU_KV_CACHE_TOKENS, engine_options, kv_bytes_per_token  # noqa: E402

COMMON = dict(dtype="bfloat16", gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=2048)


def test_a_named_kv_cache_size_reaches_vllm_in_bytes():
    options = engine_options("model-dir", kv_cache_gib=0.5, **COMMON)
    assert options["kv_cache_memory_bytes"] == 512 * 2**20


def test_on_cpu_an_unnamed_kv_cache_holds_the_default_tokens_of_the_model(model_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the token sizing applies to vLLM's CPU platform only")
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, keys and values, 2 bytes each in bfloat16
    assert kv_bytes_per_token(model_path, "bfloat16") == 2 * 30 * 3 * 64 * 2
    options = engine_options(str(model_path), **COMMON)
    assert options["kv_cache_memory_bytes"] == CPU_KV_CACHE_TOKENS * 23040
    options = engine_options(str(model_path), kv_cache_tokens=4096, **{**COMMON, "dtype": "float32"})
    assert options["kv_cache_memory_bytes"] == 4096 * 46080


def test_settings_refuse_a_kv_cache_of_zero():
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError, match="vllm.kv_cache_gib"):
        Settings(vllm={"kv_cache_gib": 0})


def test_on_cpu_engines_run_in_one_process_with_a_compile_cache_that_loads(monkeypatch):
    """On vLLM's CPU platform the options put the model worker in the engine core process and turn
    to the compile cache that loads (docs/architecture.md §10); a value the environment names wins."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("CPU platform only")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    engine_options("model-dir", kv_cache_gib=0.5, **COMMON)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE")
    engine_options("model-dir", kv_cache_gib=0.5, tensor_parallel_size=2, **COMMON)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # two workers: vLLM's own executor
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
