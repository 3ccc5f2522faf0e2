"""The preference phase of a run (`objective: dpo | sft_dpo`): direct preference optimisation on
the chains' own pairs (shared/distillation/preferences.py), each a chosen and a rejected answer to
one prompt, ordered by the task's reward.

    L(θ) = − log σ( β · [ (log π_θ(y_w | x) − log π_ref(y_w | x)) − (log π_θ(y_l | x) − log π_ref(y_l | x)) ] )

with log π(y | x) summed over the answer tokens (the prompt masked and the chat template rendered
as for SFT, services/trainer/data.py). This is TRL's DPO trainer's default (`loss_type="sigmoid"`,
β = 0.1, summed completion log-probs); tests/trainer/test_dpo_trl.py checks the loss against TRL's.

The reference is the model the phase starts from: the base model for `dpo` (a LoRA adapter starts
as the identity), the fine-tuned model for `sft_dpo`. Its log-probs are computed once, at the start
of the phase, in eval mode (TRL's `precompute_ref_log_probs`), so no second model is held in memory,
a full fine-tune works the same as LoRA, and they are written to the run's `reference_logps.json`:
a run resumed in the middle of the phase reads them back instead of computing them from weights
that have moved since.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from services.trainer.data import IGNORE_INDEX, Tokenized, collate, tokenize_example
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference

REFERENCE_FILE = "reference_logps.json"
REFERENCE_BATCH = 8  # pairs per forward pass while computing the reference
# The two passes over every pair outside the steps (minutes each on a CPU), as progress names them.
REFERENCE_PASS, FIGURES_PASS = "reference log-probs", "preference figures"

# pass, pairs done, pairs in all: each pass reports (0, n) when it starts and after every batch;
# the answer is None to go on, else why to stop (as a step's: cancelled, stopping, lease lost).
PassCallback = Callable[[str, int, int], "str | None"]


class PassStopped(Exception):
    """A pass's callback asked to stop: a pass over every pair takes minutes on a CPU, too long
    for a cancel or a shutdown to wait for the next step."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreferenceItem:
    chosen: Tokenized
    rejected: Tokenized


def tokenize_preferences(tokenizer, preferences: Sequence[Preference], max_seq_len: int) -> tuple[list[PreferenceItem], int]:
    """Both answers of each pair after its prompt (masked); a pair whose prompt leaves no room is skipped."""
    items = []
    for pair in preferences:
        chosen = tokenize_example(tokenizer, Example(None, pair.prompt, pair.chosen), max_seq_len)
        rejected = tokenize_example(tokenizer, Example(None, pair.prompt, pair.rejected), max_seq_len)
        if chosen is not None and rejected is not None:
            items.append(PreferenceItem(chosen, rejected))
    return items, len(preferences) - len(items)


def answer_logps(model, batch: dict):
    """Per row: the sum of log π(token) over the answer tokens (labels ≠ -100)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    answer = labels != IGNORE_INDEX
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (picked * answer).sum(dim=1)


def pair_logps(model, items: Sequence[PreferenceItem], pad_id: int, device):
    """(len(items), 2): log-probs of each pair's chosen and rejected answer, in one forward pass."""
    import torch

    batch = collate([item.chosen for item in items] + [item.rejected for item in items], pad_id)
    logps = answer_logps(model, {name: tensor.to(device) for name, tensor in batch.items()})
    return torch.stack(logps.chunk(2), dim=1)


def all_pair_logps(model, items: Sequence[PreferenceItem], pad_id: int, device,
                   on_batch: Callable[[int], "str | None"] | None = None):
    """`pair_logps` of every pair, in batches, in eval mode (no dropout) and without gradients;
    `on_batch(pairs done)` after each batch, PassStopped when it answers a reason to stop."""
    import torch

    was_training = model.training
    model.eval()
    values = []
    try:
        with torch.no_grad():
            for start in range(0, len(items), REFERENCE_BATCH):
                values.append(pair_logps(model, items[start:start + REFERENCE_BATCH], pad_id, device))
                if on_batch is not None and (stop := on_batch(min(start + REFERENCE_BATCH, len(items)))):
                    raise PassStopped(stop)
    finally:
        model.train(was_training)
    return torch.cat(values)


def _reporting(on_pass: PassCallback | None, name: str, total: int) -> Callable[[int], "str | None"] | None:
    """The per-batch callback of one pass, which has already reported its start."""
    if on_pass is None:
        return None
    if stop := on_pass(name, 0, total):
        raise PassStopped(stop)
    return lambda done: on_pass(name, done, total)


def implicit_margins(policy, reference, beta: float):
    """Per pair: β · (policy margin − reference margin), each margin chosen − rejected; `policy` and `reference` are (n, 2)."""
    return beta * ((policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1]))


def dpo_loss(policy, reference, beta: float):
    """Per pair: − log σ(implicit margin)."""
    import torch.nn.functional as F

    return -F.logsigmoid(implicit_margins(policy, reference, beta))


def reference_logps(model, items: Sequence[PreferenceItem], pad_id: int, device, run_dir: Path, *, write: bool,
                    on_pass: PassCallback | None = None):
    """The reference log-probs of every pair: read from the run's file where an earlier attempt
    wrote it, else computed with `model` as it is now (eval mode, no gradients) and, by the rank
    that `write`s, stored."""
    import torch

    path = run_dir / REFERENCE_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))["logps"]
        if len(stored) == len(items):
            if on_pass is not None:
                on_pass(REFERENCE_PASS, len(items), len(items))
            return torch.tensor(stored, dtype=torch.float32, device=device)
    values = all_pair_logps(model, items, pad_id, device, _reporting(on_pass, REFERENCE_PASS, len(items)))
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pairs": len(items), "logps": values.cpu().tolist()}), encoding="utf-8")
        os.replace(tmp, path)
    return values


def preference_figures(model, items: Sequence[PreferenceItem], reference, pad_id: int, device, beta: float,
                       on_pass: PassCallback | None = None) -> dict:
    """How the trained model ranks its training pairs against its reference: the share of pairs
    whose chosen answer it now favours more than the reference did (DPO's reward accuracy), and the
    mean implicit reward margin β · (policy margin − reference margin)."""
    policy = all_pair_logps(model, items, pad_id, device, _reporting(on_pass, FIGURES_PASS, len(items)))
    margins = implicit_margins(policy, reference, beta)
    return {"pairs": len(items), "accuracy": round(float((margins > 0).float().mean()), 4),
            "mean_margin": round(float(margins.mean()), 4), "mean_loss": round(float(dpo_loss(policy, reference, beta).mean()), 4)}
