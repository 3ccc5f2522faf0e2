"""transformers engine: left-padded batched `generate` on the local CPU or GPU (`device`: auto,
cpu or cuda, chosen by shared.device). Always available.

Concurrent callers take turns (one lock around tokenising, seeding and `generate`): one batch
already uses every core, and a fast tokenizer's padding settings are shared state. `close()`
stops a `generate` in flight at its next decoding step (a stopping criterion watches a flag).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from shared.engines.base import Conversation, EngineClosed, Generation, SamplingParams
from shared.device import preferred_dtype, resolve_device


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_path: Path | str, *, dtype: str | None = None, adapter_path: Path | str | None = None,
                 device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = str(model_path)
        self.device = resolve_device(device)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # Decoder-only models must be padded on the left, or generation continues after the padding.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype or preferred_dtype(self.device)))
        if adapter_path is not None:
            from peft import PeftModel

            # Merged into the base weights: the same function, one matmul per layer instead of three.
            model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
        self.hf_model = model.to(self.device).eval()
        self._lock = threading.Lock()  # one generate at a time; batching is how callers get throughput
        self._closed = threading.Event()

    def render(self, conversation: Conversation) -> str:
        return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        if not conversations:
            return []
        from transformers import StoppingCriteriaList

        torch = self._torch
        sample = params.temperature > 0
        options: dict = {"max_new_tokens": params.max_tokens, "do_sample": sample, "pad_token_id": self.tokenizer.pad_token_id}
        if sample:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            options.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with self._lock, torch.inference_mode():
            if self._closed.is_set():
                raise EngineClosed()
            texts = [self.render(conversation) for conversation in conversations]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            output = self.hf_model.generate(**batch, **options, stopping_criteria=StoppingCriteriaList([_stop_when_closed(self._closed)]))
            if self._closed.is_set():  # cut short by close(): not a real answer
                raise EngineClosed()
        prompt_width = batch["input_ids"].shape[1]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [
            self._decode(row[prompt_width:], int(prompt_tokens), params)
            for row, prompt_tokens in zip(output, prompt_lengths)
        ]

    def _decode(self, new_tokens, prompt_tokens: int, params: SamplingParams) -> Generation:
        ids = new_tokens.tolist()
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        ended = next((i for i, token in enumerate(ids) if token in special), None)
        ids = ids if ended is None else ids[:ended]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if ended is not None or len(ids) < params.max_tokens else "length"
        for stop in params.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Generation(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=len(ids), finish_reason=finish)

    def close(self) -> None:
        """Stop a generate in flight at its next step (it and any later call raise EngineClosed),
        then drop the model."""
        self._closed.set()
        with self._lock:
            self.hf_model = None


def _stop_when_closed(closed: threading.Event):
    """A stopping criterion: every row is done as soon as `closed` is set."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenClosed(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), closed.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenClosed()
