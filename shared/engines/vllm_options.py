"""The options of every vLLM engine dSC starts (the teacher's, the student's, the trainer's
evaluation engines and the benchmarks'): `engine_options` turns settings into vLLM's
`AsyncEngineArgs` and sets the process environment vLLM reads at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

from shared.device import preferred_dtype
from shared.errors import InvalidRequest

if TYPE_CHECKING:
    from shared.settings import Settings


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. a mismatched torchvision) counts as absent
        return False
    return True


def _bind_all_cores() -> None:
    # vLLM-CPU binds its OpenMP threads to ONE core by default: about half the throughput here.
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cores = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in cores)


def _worker_in_engine_core(world_size: int) -> None:
    """On CPU, one engine = the engine core and its model worker in ONE process. vLLM-CPU otherwise
    forces its multiprocess executor, which runs the model in a worker process of its own beside the
    engine core; with VLLM_ENABLE_V1_MULTIPROCESSING=0 a one-worker engine keeps vLLM's default
    in-process executor. AsyncLLM still puts the engine core in a freshly spawned process (so the
    OpenMP set-up the executor's comment worries about holds there), and this process stays free of
    the model. Measured (docs/architecture.md §10): 0.5 GiB less per engine, faster start and decoding."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and world_size == 1:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _loadable_compile_cache() -> None:
    """On CPU, vLLM's ahead-of-time compile cache (its default with torch >= 2.10) is written but
    never loads with torch 2.13 ("'function' object has no attribute 'finalize_loading'"), so every
    compiled engine compiled again; its older inductor cache loads: a second start of the same
    model took 30 s instead of 65-70 (docs/architecture.md §10)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


CPU_KV_CACHE_TOKENS = 16384  # the KV cache of an engine on CPU when settings name no size (settings.vllm.kv_cache_tokens)


def kv_bytes_per_token(model: str | Path, dtype: str) -> int:
    """Bytes one token takes in the KV cache of `model`: keys and values of every layer's KV heads."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * getattr(torch, dtype).itemsize


def _kv_cache_options(model: str, dtype: str, kv_cache_gib: float | None, kv_cache_tokens: int) -> dict:
    """vLLM-CPU sizes its KV cache by a share of NUMA node 0, which fails where the node's memory is
    onlined on demand or small; so on CPU the cache holds `kv_cache_tokens` of this model unless a size
    in GiB is named (SmolLM2-135M: 23 KB a token in bfloat16, 16k tokens 0.35 GiB)."""
    from vllm.platforms import current_platform

    if kv_cache_gib is not None:
        return {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}
    if current_platform.is_cpu():
        return {"kv_cache_memory_bytes": kv_cache_tokens * kv_bytes_per_token(model, dtype)}
    return {}


def _scheduler_options(max_model_len: int) -> dict:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    # vLLM-CPU 0.32 kills the engine ("CPU Generator does not use offset") when a seeded request's
    # prefill is split across steps; whole prefills avoid that code path.
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


class EngineOptions(TypedDict, total=False):
    """The keyword arguments of engine_options (and so of VLLMEngine and the student's VLLMRuntime)."""

    dtype: str | None
    gpu_memory_utilization: float
    enforce_eager: bool
    max_model_len: int
    kv_cache_gib: float | None
    kv_cache_tokens: int
    cpu_threads_bind: str | None
    max_loras: int
    max_lora_rank: int
    tensor_parallel_size: int
    pipeline_parallel_size: int


def engine_options(
    model: str,
    *,
    dtype: str | None = None,
    gpu_memory_utilization: float = 0.2,
    enforce_eager: bool = False,
    max_model_len: int = 2048,
    kv_cache_gib: float | None = None,
    kv_cache_tokens: int = CPU_KV_CACHE_TOKENS,
    cpu_threads_bind: str | None = None,
    max_loras: int = 0,
    max_lora_rank: int = 16,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> dict:
    """The `AsyncEngineArgs` of every vLLM engine dSC starts (the teacher's, the student's and
    the trainer's evaluation engines). Also sets the process environment vLLM reads at start-up,
    so call it right before creating the engine. `max_loras=0`: no LoRA support. The device is
    vLLM's own choice (its GPU build: CUDA; vllm-cpu: the CPU); nothing here forces one."""
    for name, size in (("tensor_parallel_size", tensor_parallel_size), ("pipeline_parallel_size", pipeline_parallel_size)):
        if int(size) < 1:
            raise InvalidRequest(f"vLLM {name} must be at least 1, got {size}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Spawn, as vLLM-CPU always does: the trainer checks for (and trains on) CUDA before its evaluation
    # engines start, and a CUDA driver initialised in a parent breaks the children it forks.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if cpu_threads_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind
    _bind_all_cores()
    _worker_in_engine_core(int(tensor_parallel_size) * int(pipeline_parallel_size))
    _loadable_compile_cache()
    options: dict = dict(
        model=model, dtype=dtype or preferred_dtype(), gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager, max_model_len=max_model_len, enable_prefix_caching=True, seed=0,
        tensor_parallel_size=int(tensor_parallel_size), pipeline_parallel_size=int(pipeline_parallel_size),
    )
    if max_loras:
        # max_loras >= 2: with 1, a batch mixing base and adapter requests served the base
        # requests with the adapter (docs/architecture.md §10).
        options.update(enable_lora=True, max_loras=max(2, max_loras), max_lora_rank=max_lora_rank)
    options.update(_kv_cache_options(model, options["dtype"], kv_cache_gib, kv_cache_tokens))
    options.update(_scheduler_options(max_model_len))
    return options


def engine_settings(settings: "Settings", **overrides: Unpack[EngineOptions]) -> EngineOptions:
    """The engine options that come from the settings (dtype, memory share, parallelism, ...);
    `overrides` replace some for one engine (the trainer's evaluation engines: their own memory
    share, eager; the student's: its LoRA slots)."""
    values = EngineOptions(
        dtype=settings.dtype, gpu_memory_utilization=settings.vllm.gpu_memory_utilization,
        enforce_eager=settings.vllm.enforce_eager, max_model_len=settings.max_model_len,
        kv_cache_gib=settings.vllm.kv_cache_gib, kv_cache_tokens=settings.vllm.kv_cache_tokens,
        cpu_threads_bind=settings.vllm.cpu_threads_bind,
        tensor_parallel_size=settings.vllm.tensor_parallel_size,
        pipeline_parallel_size=settings.vllm.pipeline_parallel_size,
    )
    values.update(overrides)
    return values
