"""The transformers runtime: a transformers model (plus peft adapters) behind a micro-batcher.

The batcher gathers concurrent rows into one batched `generate`; every row keeps its own
temperature, top_p, seed, stop strings, max_tokens, penalties, logit bias and logprobs, and rows of different adapters share a
batch through peft's mixed-adapter batches (`adapter_names=[...]`, `"__base__"` for the base model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.student.runtimes.base import LOGIT_BIAS, LOGPROBS, PENALTIES, Delta, Failed, Finished, RowParams, RowStream, TokenChoice
from services.student.runtimes.batching import MicroBatcher
from shared.errors import EngineError

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class _Row:
    prompt_ids: list[int]
    params: RowParams
    adapter: str | None
    stream: RowStream
    tokens: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the text already sent
    done: bool = False
    generator: object = None
    logprobs: list[TokenChoice] = field(default_factory=list)  # of tokens whose text is not sent yet

    @property
    def cancelled(self) -> bool:
        return self.stream.cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self.stream.cancelled = value

    def fail(self, error: BaseException) -> None:
        self.done = True
        self.stream.emit(Failed(f"generation failed: {error}"))


class _RowTracker:
    """A stopping criterion that also does the bookkeeping of each row after every step: it sees
    the token just chosen, streams the new text, and ends the row on EOS, a stop string, its own
    max_tokens or a cancelled client. generate() pads rows it reports as done."""

    def __init__(self, rows: list[_Row], tokenizer, eos_ids: set[int]) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def __call__(self, input_ids, scores, **_kwargs):
        import torch

        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if row.done:
                continue
            if row.cancelled:
                row.done = True
                continue
            if token in self.eos_ids:
                if row.params.logprobs is not None:
                    row.logprobs.pop()  # the end of the message is no part of its content (as OpenAI reports it)
                self.finish(row, "stop")
                continue
            row.tokens.append(token)
            self.push_text(row)
            if not row.done and len(row.tokens) >= row.params.max_tokens:
                self.finish(row, "length")
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def push_text(self, row: _Row, *, final: bool = False, reason: str | None = None) -> None:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return
        stops = row.params.stop
        hits = [text.find(stop) for stop in stops if stop in text]
        if hits:
            text, final, reason = text[: min(hits)], True, "stop"
        visible = text
        if not final and stops:  # hold back what may be the start of a stop string
            visible = text[: max(row.emitted, len(text) - (max(map(len, stops)) - 1))]
        if len(visible) > row.emitted or (final and row.logprobs):
            row.stream.emit(Delta(visible[row.emitted:], tuple(row.logprobs)))
            row.emitted = len(visible)
            row.logprobs.clear()
        if final:
            row.done = True
            row.stream.emit(Finished(reason or "stop", len(row.prompt_ids), len(row.tokens)))

    def finish(self, row: _Row, reason: str) -> None:
        self.push_text(row, final=True, reason=reason)


class _RowSampler:
    """A logits processor that applies each row's logit bias and penalties, samples it with its own
    temperature, top_p and seeded generator, then leaves only the chosen token: generate() runs
    greedy and just takes it. Greedy rows (temperature 0) keep their adjusted scores, whose
    maximum generate() takes, so one batch mixes any sampling parameters. It also records the
    chosen token's log probability (of the model's raw scores, as vLLM reports them) where asked."""

    def __init__(self, rows: list[_Row], tokenizer) -> None:
        self.rows = rows
        self.tokenizer = tokenizer

    def __call__(self, input_ids, scores):
        import torch

        for i, row in enumerate(self.rows):
            if row.done:
                continue
            params = row.params
            raw = torch.log_softmax(scores[i].float(), dim=-1) if params.logprobs is not None else None
            if params.logit_bias:
                ids = torch.tensor(list(params.logit_bias), device=scores.device)
                scores[i, ids] += torch.tensor(list(params.logit_bias.values()), device=scores.device, dtype=scores.dtype)
            if (params.presence_penalty or params.frequency_penalty) and row.tokens:
                counts = torch.bincount(torch.tensor(row.tokens, device=scores.device), minlength=scores.shape[-1])[: scores.shape[-1]]
                scores[i] -= (params.frequency_penalty * counts + params.presence_penalty * (counts > 0)).to(scores.dtype)
            if params.temperature > 0:
                probs = torch.softmax(scores[i] / params.temperature, dim=-1)
                if params.top_p < 1.0:
                    sorted_probs, order = probs.sort(descending=True)
                    outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
                    sorted_probs[outside] = 0.0
                    probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
                token = int(torch.multinomial(probs, 1, generator=row.generator))
                chosen = scores[i, token].clone()
                scores[i] = float("-inf")
                scores[i, token] = chosen
            else:
                token = int(scores[i].argmax())
            if raw is not None:
                top = raw.topk(params.logprobs) if params.logprobs else None
                alternatives = tuple((self.tokenizer.decode([int(t)]), float(v)) for v, t in zip(*top)) if top else ()
                row.logprobs.append(TokenChoice(self.tokenizer.decode([token]), float(raw[token]), alternatives))
        return scores


class TransformersRuntime:
    """A transformers model (plus peft adapters) behind a micro-batcher."""

    kind = "transformers"
    serves_adapters = True
    supports = frozenset({LOGPROBS, PENALTIES, LOGIT_BIAS})  # no structured output: response_format and forced tools are refused

    def __init__(
        self,
        base_path: Path,
        *,
        dtype: str | None = None,
        max_batch: int = 16,
        window_s: float = 0.015,
        max_model_len: int = 2048,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        import torch

        from shared.engines.transformers_engine import TransformersEngine

        self._torch = torch
        self.base_path = Path(base_path)
        self._engine = TransformersEngine(base_path, dtype=dtype)  # loading code shared with the trainer and teacher
        self.tokenizer = self._engine.tokenizer
        self.model = self._engine.hf_model
        self.max_model_len = max_model_len
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            self._eos_ids.add(self.tokenizer.eos_token_id)
        self._adapters: set[str] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="student-generate")
        self.batcher: MicroBatcher[_Row] = MicroBatcher(
            self._run_batch, executor=self._executor, max_batch=max_batch, window_s=window_s, on_batch=on_batch
        )
        self._seed_lock = threading.Lock()

    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    def start(self, prompt_ids: list[int], params: RowParams, adapter: str | None) -> RowStream:
        stream = RowStream(asyncio.get_running_loop())
        generator = self._torch.Generator(device=self.model.device)  # sampling runs where the logits are
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        self.batcher.submit(_Row(list(prompt_ids), params, adapter, stream, generator=generator))
        return stream

    def _run_batch(self, rows: list[_Row]) -> None:
        torch = self._torch
        try:
            pad = self.tokenizer.pad_token_id
            width = max(len(row.prompt_ids) for row in rows)
            device = self.model.device
            input_ids = torch.tensor([[pad] * (width - len(row.prompt_ids)) + row.prompt_ids for row in rows], device=device)
            attention = torch.tensor([[0] * (width - len(row.prompt_ids)) + [1] * len(row.prompt_ids) for row in rows], device=device)
            tracker = _RowTracker(rows, self.tokenizer, self._eos_ids)
            options: dict = dict(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(row.params.max_tokens for row in rows),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                logits_processor=[_RowSampler(rows, self.tokenizer)],
                stopping_criteria=[tracker],
            )
            if self._adapters:
                options["adapter_names"] = [row.adapter or BASE_ADAPTER for row in rows]
            elif any(row.adapter for row in rows):
                raise EngineError(f"adapter {next(r.adapter for r in rows if r.adapter)!r} is not loaded")
            with torch.inference_mode():
                self.model.generate(**options)
            for row in rows:  # rows generate() ended without the tracker (max_new_tokens of the batch)
                if not row.done:
                    tracker.finish(row, "length")
        except Exception as exc:
            log.exception("batched generate failed")
            for row in rows:
                if not row.done:
                    row.fail(exc)

    async def load_adapter(self, name: str, path: Path) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_adapter, name, path)

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if not self._adapters:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
        else:
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.model.eval()
        self._adapters.add(name)

    async def unload_adapter(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._unload_adapter, name)

    def _unload_adapter(self, name: str) -> None:
        if name not in self._adapters or len(self._adapters) == 1:
            # peft cannot drop its last adapter; a resident, unrouted adapter costs little and is
            # replaced by the next load.
            return
        if self.model.active_adapter == name:
            self.model.set_adapter(next(other for other in self._adapters if other != name))
        self.model.delete_adapter(name)
        self._adapters.discard(name)

    async def close(self) -> None:
        await self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._engine.close()
