"""What a run checks before the trainer loads any weights: the checks that need the student's model
and tokenizer, which the submission (shared/distillation/runs.py) leaves to the trainer so that the
teacher never loads either. A run that fails one fails at once, with the reason as its error.
"""

from __future__ import annotations

from pathlib import Path
from services.trainer.data import Snapshot, tokenize_all
from services.trainer.distill import load_tokenizer
from services.trainer.dpo import tokenize_preferences
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import require_training_pairs
from shared.errors import InvalidRequest
from shared.tasks import TaskSpec


def check_model(config: DistillationConfig, base_path: Path) -> None:
    """LoRA targets exist and max_seq_len fits, read from the model's config (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(base_path)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and config.max_seq_len > limit:
        raise InvalidRequest(f"max_seq_len {config.max_seq_len} exceeds the base model's {limit} positions", param="max_seq_len")
    if config.method != "lora":
        return
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config)
    names = {name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = [target for target in config.lora_target_modules if target not in names]
    if unknown:
        raise InvalidRequest(
            f"lora_target_modules {unknown} do not exist in {config.base_model}; its linear layers are {sorted(names)}",
            param="lora_target_modules",
        )


def preflight(config: DistillationConfig, task: TaskSpec, base_path: Path, snapshot: Snapshot, *, min_pairs: int) -> None:
    """The model fits the config, and at least `min_pairs` of the run's training examples (or
    preference pairs, for a preference objective) fit max_seq_len in the student's own chat template."""
    check_model(config, base_path)
    tokenizer = load_tokenizer(base_path)
    if config.fine_tunes:
        items, _skipped = tokenize_all(tokenizer, snapshot.train, config.max_seq_len)
        require_training_pairs(len(items), snapshot.matching, len(snapshot.eval_prompts), config, task, min_pairs, tokenised=True)
    if config.prefers:
        pairs, skipped = tokenize_preferences(tokenizer, snapshot.preferences, config.max_seq_len)
        if len(pairs) < min_pairs:
            raise InvalidRequest(f"too few preference pairs: {len(pairs)} of {len(snapshot.preferences)} fit max_seq_len="
                                 f"{config.max_seq_len} ({skipped} do not); at least {min_pairs} are needed (distill_min_pairs)",
                                 param="max_seq_len")
