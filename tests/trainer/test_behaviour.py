"""The distilled adapter changes behaviour in the trained direction.

A tiny but real training set whose target is unmistakable: every film prompt is answered with the
same sentence. After a few LoRA steps the student, on film prompts it never saw, (1) gives that
sentence far higher likelihood than the base model does and (2) actually says it when decoding
greedily, while the base model never does.
"""

from __future__ import annotations

from pathlib import Path

from services.trainer.data import IGNORE_INDEX, collate, tokenize_example
from services.trainer.distill import load_tokenizer
from services.trainer.training import train
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example

PHRASE = "Pineapples are the best thing in every film."


def _answer_nll(model, tokenizer, prompts: list[str]) -> float:
    """Mean negative log-likelihood per answer token of PHRASE after each prompt."""
    import torch

    items = [tokenize_example(tokenizer, Example(None, prompt, PHRASE), 128) for prompt in prompts]
    batch = collate(items, tokenizer.pad_token_id)
    with torch.inference_mode():
        loss = model(**batch).loss  # mean over the answer tokens (labels mask the prompt)
    assert (batch["labels"] != IGNORE_INDEX).sum() >= len(prompts) * 5
    return float(loss)


def _greedy(model, tokenizer, prompts: list[str]) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=14, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]


def test_adapter_moves_outputs_towards_the_trained_answer(tmp_path: Path, model_path: Path, helpers):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    films = helpers.film_prompts
    train_prompts, unseen = films[:9], films[9:]
    config = DistillationConfig(task="sentiment", max_steps=12, batch_size=3, learning_rate=2e-3, max_seq_len=64,
                                save_steps=6, warmup_ratio=0.0, lora_dropout=0.0, seed=0)
    result = train(config, model_path, [Example(i, p, PHRASE) for i, p in enumerate(train_prompts)], tmp_path / "run")
    assert result.steps == 12 and result.losses[-1][1] < result.losses[0][1] / 3

    tokenizer = load_tokenizer(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    base_nll = _answer_nll(base, tokenizer, unseen)
    base_outputs = _greedy(base, tokenizer, unseen)
    student = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    student_nll = _answer_nll(student, tokenizer, unseen)
    student_outputs = _greedy(student, tokenizer, unseen)

    assert student_nll < base_nll / 3, (base_nll, student_nll)
    said = [("pineapple" in text.lower()) for text in student_outputs]
    assert sum(said) >= 2, student_outputs
    assert not any("pineapple" in text.lower() for text in base_outputs), base_outputs
