"""Which accepted pairs a distillation run trains on, and which prompts it is evaluated on.

Pairs are selected by the run's filter (task, jobs, owners, minimum reward gain, acceptance rule), up to
the newest pair id the run was submitted with. The submission counts them here (cheaply: no
tokenizer); the trainer selects them again, from the same query, into the run's frozen snapshot
(services/trainer/data.py).

What a run evaluates on is, in order: the run's own `eval_prompts`, else the task's evaluation set
(written apart from its training prompts), else a held-out share of the pair prompts (split by
distinct prompt, so all chains of one prompt land on the same side). Whichever it is, no pair whose
prompt is an evaluation prompt — of the run or of the task — ever trains (`plan_split`).

Of the pairs that match, `select_examples` keeps those whose improved answer reached the run's
reward floor and, by default, only the best-scored one per prompt: the chain that climbed
highest under the reward is the closest sample to the tilted posterior the student should learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Sequence

from sqlalchemy import Select, false, or_, select

from shared.db.models import ChainRecord, Job, Pair
from shared.distillation.config import DistillationConfig
from shared.errors import InvalidRequest
from shared.keys import NO_OWNER
from shared.tasks import TaskSpec, normalise_prompt
from shared.text_stats import finished_part, repeated_share


def of_jobs(query: Select, job_id: Any, config: DistillationConfig) -> Select:
    """Rows (pairs or chains, whose job is the column `job_id`) of the run's jobs and owners."""
    if config.jobs:
        query = query.where(job_id.in_(config.jobs))
    if config.owners:
        keys = [owner for owner in config.owners if owner != NO_OWNER]
        owned = Job.owner.in_(keys) if keys else false()
        query = query.join(Job, Job.id == job_id).where(or_(owned, Job.owner.is_(None)) if NO_OWNER in config.owners else owned)
    return query


def pair_query(config: DistillationConfig) -> Select:
    """The pairs a run trains on, oldest first (a stable order, so a snapshot is reproducible).
    Pairs excluded in review never train; an exclusion made after a run took its snapshot does
    not change that run."""
    query = of_jobs(select(Pair).where(Pair.task_name == config.task, Pair.excluded.is_(False)), Pair.job_id, config)
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
    truncated: bool | None = None  # cut off at the job's max_tokens (None: not recorded)

    @classmethod
    def of_pair(cls, row: Any) -> "Example":
        """From a stored pair (a `Pair` or a row of its columns id, prompt, response, rewards, truncated)."""
        return cls(row.id, row.prompt, row.response, row.reward_before, row.reward_after, row.truncated)

    def to_json(self) -> dict[str, Any]:
        return {"pair_id": self.pair_id, "prompt": self.prompt, "response": self.response,
                "reward_before": self.reward_before, "reward_after": self.reward_after, "truncated": self.truncated}


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
    """The pairs worth training on: above the reward floor, not looping (max_repetition), finished
    (an answer cut off at max_tokens is dropped, trimmed to its last finished sentence or kept, as
    truncated_answers says), each (prompt, response) once (a job submitted twice, or two chains that
    converged, must not weigh an answer double) and, with best_per_prompt, one per prompt (the best
    of those left)."""
    floor = config.min_reward if config.min_reward is not None else task_floor
    if config.truncated_answers == "trim":
        examples = [e for e in map(_trimmed, examples) if e is not None]
    above = [e for e in examples if (floor is None or (e.reward_after is not None and e.reward_after >= floor))
             and (config.max_repetition is None or repeated_share(e.response) <= config.max_repetition)
             and not (config.truncated_answers == "drop" and e.truncated)]
    seen: set[tuple[str, str]] = set()
    kept = []
    for example in above:  # oldest first: the first copy stays
        if (example.prompt, example.response) not in seen:
            seen.add((example.prompt, example.response))
            kept.append(example)
    if not config.best_per_prompt:
        return kept
    best: dict[str, Example] = {}
    for example in kept:  # oldest first: the first of equally good answers wins
        current = best.get(example.prompt)
        if current is None or (example.reward_after or 0.0) > (current.reward_after or 0.0):
            best[example.prompt] = example
    chosen = {id(e) for e in best.values()}
    return [e for e in kept if id(e) in chosen]


def _trimmed(example: Example) -> Example | None:
    """A cut-off answer cut back to its last finished sentence (None: too little would be left);
    a finished one as it is. It keeps its flag and the stored reward of the whole answer."""
    if not example.truncated:
        return example
    finished = finished_part(example.response)
    return None if finished is None else replace(example, response=finished)


def require_training_pairs(kept: int, matching: int, eval_prompts: int, config: DistillationConfig, task: TaskSpec,
                           min_pairs: int, *, tokenised: bool = False) -> None:
    """Refuse a run left with fewer than `min_pairs` training pairs, saying what removed the others:
    the submission counts the selected pairs, the trainer those that also fit max_seq_len (`tokenised`)."""
    if kept >= min_pairs:
        return
    floor = config.min_reward if config.min_reward is not None else task.train_min_reward
    rules = [f"the reward floor {floor}" if floor is not None else "no reward floor"]
    if config.max_repetition is not None:
        rules.append(f"answers repeating more than {config.max_repetition:.0%} of their 3-grams")
    if config.truncated_answers == "drop":
        rules.append("answers cut off at the job's max_tokens (truncated_answers='keep' trains them; or sample with a "
                     "larger max_tokens)")
    elif config.truncated_answers == "trim":
        rules.append("cut-off answers with no finished sentence in their first half")
    if config.best_per_prompt:
        rules.append("one best answer per prompt")
    if tokenised:
        rules.append(f"max_seq_len={config.max_seq_len}")
    raise InvalidRequest(
        f"too few training pairs: {kept} of {matching} matching pairs are left after dropping evaluation prompts "
        f"({eval_prompts}), {' and '.join(rules)}; at least {min_pairs} are needed (distill_min_pairs)",
        param="max_seq_len" if tokenised else "task",
    )


def barred_prompts(config: DistillationConfig, task_eval_prompts: Sequence[str] = ()) -> set[str]:
    """The evaluation prompts (of the task and of the run), normalised: no pair of them ever trains."""
    return {normalise_prompt(p) for p in [*task_eval_prompts, *(config.eval_prompts or [])]}


def plan_split(examples: Sequence[Example], config: DistillationConfig,
               task_eval_prompts: Sequence[str] = ()) -> tuple[list[Example], list[str]]:
    """(training examples, evaluation prompts). Pairs of any evaluation prompt are dropped from training."""
    barred = barred_prompts(config, task_eval_prompts)
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
