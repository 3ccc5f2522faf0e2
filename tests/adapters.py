"""Real LoRA adapters for tests, trained in seconds: each answers one phrase to anything."""

from __future__ import annotations

from pathlib import Path

PHRASE = "Pineapple pizza forever."  # what the test adapter learned to answer


def train_phrase_adapter(model_path: Path, out: Path, phrase: str = PHRASE, steps: int = 8) -> Path:
    """A real peft LoRA adapter on SmolLM2, trained for a few steps to answer `phrase` to anything.
    Only the top layers are adapted, so backpropagation stops there: ~10 s on two cores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        layers_to_transform=list(range(layers - 6, layers)), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    examples = []
    for prompt in ("Say hello.", "Tell me about the weather."):
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(phrase + "<|im_end|>", add_special_tokens=False)["input_ids"]
        examples.append((torch.tensor([prompt_ids + answer_ids]), torch.tensor([[-100] * len(prompt_ids) + answer_ids])))
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out
