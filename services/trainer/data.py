"""The training data of a run: the frozen snapshot of its pairs, and the token batches.

Which pairs and which evaluation prompts is decided in shared/distillation/pairs.py. The selection
is written once to the run's artifact directory (`snapshot.jsonl`, for a preference objective
`preferences.jsonl` (shared/distillation/preferences.py), and `split.json`). Every later
attempt of the run (a resume after a kill) reads the snapshot, never the database again, so pairs
added meanwhile cannot change what a run trains on, and the run can be repeated from its files.

Tokenisation uses the student's own chat template: the prompt is the rendered user turn with the
generation prompt (`<|im_start|>assistant\\n` for SmolLM2), the completion is the rest of the
rendered two-turn conversation (the answer and its end-of-turn token). Labels are -100 on the
prompt and on padding, so the loss is on the answer tokens only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sqlalchemy.orm import Session

from shared.distillation.config import DistillationConfig, steps_per_epoch
from shared.distillation.pairs import Example, pair_query, plan_data, plan_split
from shared.distillation.preferences import Preference, run_preferences
from shared.distillation.runs import PREFERENCES_FILE, SNAPSHOT_FILE
from shared.tasks import TaskSpec

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Snapshot:
    """The frozen data of a run: training examples, preference pairs and the prompts it is evaluated on."""

    train: list[Example]
    eval_prompts: list[str]
    digest: str  # sha256 of the snapshot files: the identity of the training data
    matching: int  # pairs that matched the run's filter, before the split and the selection
    preferences: list[Preference] = field(default_factory=list)  # a preference objective's pairs


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _lines(rows: Sequence[Example] | Sequence[Preference]) -> str:
    return "".join(json.dumps(row.to_json(), ensure_ascii=False) + "\n" for row in rows)


def take_snapshot(session: Session, config: DistillationConfig, task: TaskSpec, run_dir: Path) -> Snapshot:
    """Write the run's data once; later attempts read it back unchanged. split.json is written
    last: where it is, the snapshot is whole."""
    data_file, split_file = run_dir / SNAPSHOT_FILE, run_dir / "split.json"
    if data_file.is_file() and split_file.is_file():
        return load_snapshot(run_dir)
    examples = [Example.of_pair(row) for row in session.scalars(pair_query(config))]
    train, eval_prompts = plan_data(examples, config, task)
    run_dir.mkdir(parents=True, exist_ok=True)
    answers = _lines(train)
    preferences = _lines(run_preferences(session, config, task, examples)) if config.prefers else ""
    if config.prefers:
        _atomic_write(run_dir / PREFERENCES_FILE, preferences)
    _atomic_write(data_file, answers)
    text = answers + preferences
    split = {"eval_prompts": eval_prompts, "held_out_pair_ids": sorted({e.pair_id for e in examples} - {e.pair_id for e in plan_split(examples, config, task.eval_prompts)[0]}),
             "sha256": hashlib.sha256(text.encode()).hexdigest(), "pairs_selected": len(examples)}
    _atomic_write(split_file, json.dumps(split, indent=1, ensure_ascii=False))
    return load_snapshot(run_dir)


def load_snapshot(run_dir: Path) -> Snapshot:
    text = (run_dir / SNAPSHOT_FILE).read_text(encoding="utf-8")
    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
    train = [Example(**json.loads(line)) for line in text.splitlines() if line.strip()]
    preferences: list[Preference] = []
    if (run_dir / PREFERENCES_FILE).is_file():
        more = (run_dir / PREFERENCES_FILE).read_text(encoding="utf-8")
        preferences = [Preference.from_json(json.loads(line)) for line in more.splitlines() if line.strip()]
        text += more
    return Snapshot(train=train, eval_prompts=split["eval_prompts"], digest=hashlib.sha256(text.encode()).hexdigest(),
                    matching=split["pairs_selected"], preferences=preferences)


# --- tokenisation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]


def render(tokenizer, prompt: str, response: str) -> tuple[str, str]:
    """(prompt text, completion text) in the student's chat template."""
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):  # a template that renders history differently: fall back to plain concatenation
        return head, response + (tokenizer.eos_token or "")
    return head, full[len(head):]


def tokenize_example(tokenizer, example: Example, max_seq_len: int, min_answer_tokens: int = 4) -> Tokenized | None:
    """Prompt tokens masked, answer tokens trained; None when the prompt leaves no room for an answer."""
    head, tail = render(tokenizer, example.prompt, example.response)
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    room = max_seq_len - len(prompt_ids)
    if room < min(min_answer_tokens, len(answer_ids)) or not answer_ids:
        return None
    answer_ids = answer_ids[:room]
    return Tokenized(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def tokenize_all(tokenizer, examples: Sequence[Example], max_seq_len: int) -> tuple[list[Tokenized], int]:
    """Tokenised examples and how many were skipped (prompt longer than max_seq_len allows)."""
    out = [tokenize_example(tokenizer, example, max_seq_len) for example in examples]
    kept = [item for item in out if item is not None]
    return kept, len(out) - len(kept)


def collate(items: Sequence[Tokenized], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the examples of optimizer step `step`: epoch e is a seeded permutation, so the
    order is a pure function of (seed, step) and a resumed run sees exactly the batches it would have."""
    epoch, position = divmod(step, steps_per_epoch(n, batch_size))
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]

