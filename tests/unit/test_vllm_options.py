"""The arguments every vLLM engine of dSC starts with: the KV cache sizing."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from shared.engines.vllm_engine import CPU_KV_CACHE_GIB, engine_options  # noqa: E402

COMMON = dict(dtype="bfloat16", gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=2048)


def test_a_named_kv_cache_size_reaches_vllm_in_bytes():
    options = engine_options("model-dir", kv_cache_gib=0.5, **COMMON)
    assert options["kv_cache_memory_bytes"] == 512 * 2**20


def test_on_cpu_an_unnamed_kv_cache_gets_the_cpu_default():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the CPU default applies to vLLM's CPU platform only")
    options = engine_options("model-dir", **COMMON)
    assert options["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GIB * 2**30)


def test_settings_refuse_a_kv_cache_of_zero():
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError, match="vllm.kv_cache_gib"):
        Settings(vllm={"kv_cache_gib": 0})
