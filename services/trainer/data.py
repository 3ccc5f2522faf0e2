"""The training data of a run: which pairs, the frozen snapshot of them, and the token batches.

Pairs are selected by the run's filter (task, jobs, minimum reward gain, acceptance rule) and
written once to the run's artifact directory (`snapshot.jsonl`, `split.json`). Every later
attempt of the run (a resume after a kill) reads the snapshot, never the database again, so pairs
added meanwhile cannot change what a run trains on, and the run can be repeated from its files.

What a run evaluates on is, in order: the run's own `eval_prompts`, else the task's evaluation set
(written apart from its training prompts), else a held-out share of the pair prompts (split by
distinct prompt, so all chains of one prompt land on the same side). Whichever it is, no pair whose
prompt is an evaluation prompt — of the run or of the task — ever trains (`plan_split`).

Of the pairs that match, `select_examples` keeps those whose improved answer reached the run's
reward floor and, by default, only the best-scored one per prompt: the chain that climbed
highest under the reward is the closest sample to the tilted posterior the student should learn.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from services.trainer.config import DistillationConfig
from shared.db.models import ChainRecord, Pair
from shared.tasks import TaskSpec, normalise_prompt

IGNORE_INDEX = -100


def pair_query(config: DistillationConfig) -> Select:
    """The pairs a run trains on, oldest first (a stable order, so a snapshot is reproducible).
    Pairs excluded in review never train; an exclusion made after a run took its snapshot does
    not change that run."""
    query = select(Pair).where(Pair.task_name == config.task, Pair.excluded.is_(False))
    if config.jobs:
        query = query.where(Pair.job_id.in_(config.jobs))
    if config.pair_id_max is not None:
        query = query.where(Pair.id <= config.pair_id_max)
    if config.min_reward_gain is not None:
        query = query.where(Pair.reward_gain >= config.min_reward_gain)
    if config.acceptance is not None:
        query = query.join(ChainRecord, ChainRecord.id == Pair.chain_id).where(ChainRecord.acceptance == config.acceptance)
    query = query.order_by(Pair.id)
    if config.max_pairs is not None:
        query = query.limit(config.max_pairs)
    return query


@dataclass(frozen=True)
class Example:
    pair_id: int | None
    prompt: str
    response: str
    reward_before: float | None = None
    reward_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pair_id": self.pair_id, "prompt": self.prompt, "response": self.response,
                "reward_before": self.reward_before, "reward_after": self.reward_after}


@dataclass(frozen=True)
class Snapshot:
    """The frozen data of a run: training examples and the prompts it is evaluated on."""

    train: list[Example]
    eval_prompts: list[str]
    digest: str  # sha256 of the snapshot file: the identity of the training data


def split_prompts(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[str]]:
    """Hold out `fraction` of the distinct prompts (at least one when fraction > 0)."""
    prompts = sorted({example.prompt for example in examples})
    if fraction <= 0:
        return list(examples), []
    random.Random(seed).shuffle(prompts)
    count = min(max(1, round(len(prompts) * fraction)), len(prompts) - 1)
    held = set(prompts[:count])
    return [e for e in examples if e.prompt not in held], [p for p in prompts if p in held]


def select_examples(examples: Sequence[Example], config: DistillationConfig, task_floor: float | None = None) -> list[Example]:
    """The pairs worth training on: above the reward floor and, with best_per_prompt, one per prompt."""
    floor = config.min_reward if config.min_reward is not None else task_floor
    kept = [e for e in examples if floor is None or (e.reward_after is not None and e.reward_after >= floor)]
    if not config.best_per_prompt:
        return kept
    best: dict[str, Example] = {}
    for example in kept:  # oldest first: the first of equally good answers wins
        current = best.get(example.prompt)
        if current is None or (example.reward_after or 0.0) > (current.reward_after or 0.0):
            best[example.prompt] = example
    chosen = {id(e) for e in best.values()}
    return [e for e in kept if id(e) in chosen]


def plan_split(examples: Sequence[Example], config: DistillationConfig, task_eval_prompts: Sequence[str] = ()) -> tuple[list[Example], list[str]]:
    """(training examples, evaluation prompts). Pairs of any evaluation prompt are dropped from training."""
    barred = {normalise_prompt(p) for p in [*task_eval_prompts, *(config.eval_prompts or [])]}
    allowed = [e for e in examples if normalise_prompt(e.prompt) not in barred]
    if config.eval_prompts is not None:
        return allowed, list(dict.fromkeys(config.eval_prompts))
    if task_eval_prompts:
        return allowed, list(dict.fromkeys(task_eval_prompts))
    return split_prompts(allowed, config.held_out_fraction, config.seed)


def plan_data(examples: Sequence[Example], config: DistillationConfig, task: TaskSpec) -> tuple[list[Example], list[str]]:
    """Split, then select: what a run of `config` on `task` trains on and evaluates on."""
    train, eval_prompts = plan_split(examples, config, task.eval_prompts)
    return select_examples(train, config, task.train_min_reward), eval_prompts[: config.max_eval_prompts]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def take_snapshot(session: Session, config: DistillationConfig, task: TaskSpec, run_dir: Path) -> Snapshot:
    """Write the run's data once; later attempts read it back unchanged."""
    data_file, split_file = run_dir / "snapshot.jsonl", run_dir / "split.json"
    if data_file.is_file() and split_file.is_file():
        return load_snapshot(run_dir)
    examples = [
        Example(row.id, row.prompt, row.response, row.reward_before, row.reward_after)
        for row in session.scalars(pair_query(config))
    ]
    train, eval_prompts = plan_data(examples, config, task)
    text = "".join(json.dumps(example.to_json(), ensure_ascii=False) + "\n" for example in train)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(data_file, text)
    split = {"eval_prompts": eval_prompts, "held_out_pair_ids": sorted({e.pair_id for e in examples} - {e.pair_id for e in plan_split(examples, config, task.eval_prompts)[0]}),
             "sha256": hashlib.sha256(text.encode()).hexdigest(), "pairs_selected": len(examples)}
    _atomic_write(split_file, json.dumps(split, indent=1, ensure_ascii=False))
    return load_snapshot(run_dir)


def load_snapshot(run_dir: Path) -> Snapshot:
    text = (run_dir / "snapshot.jsonl").read_text(encoding="utf-8")
    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
    train = [Example(**json.loads(line)) for line in text.splitlines() if line.strip()]
    return Snapshot(train=train, eval_prompts=split["eval_prompts"], digest=hashlib.sha256(text.encode()).hexdigest())


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
    per_epoch = max(1, -(-n // batch_size))
    epoch, position = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))
