"""Preference pairs from stored chains: what `GET /v1/pairs/export?format=preference` streams, in
TRL's conversational preference format (`prompt`, `chosen`, `rejected`) with both rewards and
their margin.

Two comparisons come out of a prompt's chains, each ordered by the task's reward (never by the
chain's own verdict, which under `always` acceptance may keep a worse revision):

- `revision`: a chain's first draft against its final answer, where they differ;
- `chains`: the best final answer of the prompt's chains against the worst, where the prompt has
  more than one chain and they differ.

A tie (equal rewards) prefers nothing and is left out, as is a pair below the caller's minimum margin (the export's `min_gain`).
Each side says whether the teacher cut it off at the job's max_tokens (`chosen_truncated`,
`rejected_truncated`; null for chains stored before that was recorded). Preference pairs keep such
answers: a run's `truncated_answers` rule applies to its SFT answers only (the DPO rows of
docs/distillation.md were measured that way).

A run with a preference objective (`objective: dpo | sft_dpo`) trains on the same pairs, selected
by its own filter (`training_chains`, `training_preferences`) into its frozen snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from shared.db.models import ChainRecord, Pair
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example, barred_prompts, of_jobs, plan_split
from shared.tasks import TaskSpec, normalise_prompt
from shared.text_stats import repeated_share

CHAIN_ORDER = (ChainRecord.job_id, ChainRecord.prompt_index, ChainRecord.chain_index)  # groups a prompt's chains


@dataclass(frozen=True)
class ChainAnswers:
    """What a preference pair needs of one stored chain."""

    id: int
    job_id: str
    prompt_index: int
    task_name: str
    prompt: str
    initial_text: str
    initial_reward: float
    final_text: str
    final_reward: float
    initial_truncated: bool | None = None  # cut off at max_tokens; None: stored before that was recorded
    final_truncated: bool | None = None

    @property
    def draft(self) -> "Answer":
        return Answer(self.initial_text, self.initial_reward, self.initial_truncated)

    @property
    def final(self) -> "Answer":
        return Answer(self.final_text, self.final_reward, self.final_truncated)


@dataclass(frozen=True)
class Answer:
    """One side of a preference pair."""

    text: str
    reward: float
    truncated: bool | None


def _record(kind: str, chain: ChainAnswers, a: Answer, b: Answer, chain_ids: list[int]) -> dict[str, Any] | None:
    chosen, rejected = sorted((a, b), key=lambda answer: answer.reward, reverse=True)
    if chosen.text == rejected.text or chosen.reward == rejected.reward:
        return None
    return {
        "prompt": [{"role": "user", "content": chain.prompt}],
        "chosen": [{"role": "assistant", "content": chosen.text}],
        "rejected": [{"role": "assistant", "content": rejected.text}],
        "chosen_reward": chosen.reward, "rejected_reward": rejected.reward, "margin": chosen.reward - rejected.reward,
        "chosen_truncated": chosen.truncated, "rejected_truncated": rejected.truncated,
        "source": kind, "task": chain.task_name, "job_id": chain.job_id, "chain_ids": chain_ids,
    }


def preference_records(chains: Sequence[ChainAnswers], min_margin: float | None = None) -> list[dict[str, Any]]:
    """The preference pairs of one prompt's chains (of one job), revision pairs first."""
    records = [_record("revision", chain, chain.final, chain.draft, [chain.id]) for chain in chains]
    if len(chains) > 1:
        best = max(chains, key=lambda chain: (chain.final_reward, -chain.id))
        worst = min(chains, key=lambda chain: (chain.final_reward, chain.id))
        records.append(_record("chains", best, best.final, worst.final, [best.id, worst.id]))
    return [record for record in records if record is not None and (min_margin is None or record["margin"] >= min_margin)]


def by_prompt(chains: Iterable[ChainAnswers]) -> Iterable[list[ChainAnswers]]:
    """Consecutive chains of one (job, prompt) as groups; the input is ordered by job and prompt."""
    group: list[ChainAnswers] = []
    for chain in chains:
        if group and (chain.job_id, chain.prompt_index) != (group[0].job_id, group[0].prompt_index):
            yield group
            group = []
        group.append(chain)
    if group:
        yield group


def chain_columns(excluded: bool | None = None) -> Select:
    """The columns of `ChainAnswers`. Chains whose accepted pair was excluded in review are left out
    unless `excluded` is true (then only they are in): an excluded answer is not to be preferred either."""
    columns = select(ChainRecord.id, ChainRecord.job_id, ChainRecord.prompt_index, ChainRecord.task_name, ChainRecord.prompt,
                     ChainRecord.initial_text, ChainRecord.initial_reward, ChainRecord.final_text, ChainRecord.final_reward,
                     ChainRecord.initial_truncated, ChainRecord.final_truncated)
    if excluded:
        return columns.join(Pair, Pair.chain_id == ChainRecord.id).where(Pair.excluded.is_(True))
    return columns.outerjoin(Pair, Pair.chain_id == ChainRecord.id).where(or_(Pair.id.is_(None), Pair.excluded.is_(False)))


def training_chains(config: DistillationConfig) -> Select:
    """The chains a preference run's pairs come from, grouped by (job, prompt): the run's task,
    jobs, owners and acceptance rule, up to the newest chain id it was submitted with."""
    query = of_jobs(chain_columns().where(ChainRecord.task_name == config.task), ChainRecord.job_id, config)
    if config.chain_id_max is not None:
        query = query.where(ChainRecord.id <= config.chain_id_max)
    if config.acceptance is not None:
        query = query.where(ChainRecord.acceptance == config.acceptance)
    return query.order_by(*CHAIN_ORDER)


@dataclass(frozen=True)
class Preference:
    """One preference pair a run trains on (a line of its `preferences.jsonl`)."""

    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    source: str  # revision | chains
    chain_ids: tuple[int, ...]
    chosen_truncated: bool | None = None  # absent from snapshots written before it was recorded
    rejected_truncated: bool | None = None

    @classmethod
    def of(cls, record: dict[str, Any]) -> "Preference":
        return cls(record["prompt"][0]["content"], record["chosen"][0]["content"], record["rejected"][0]["content"],
                   record["chosen_reward"], record["rejected_reward"], record["source"], tuple(record["chain_ids"]),
                   record["chosen_truncated"], record["rejected_truncated"])

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "chosen_reward": self.chosen_reward,
                "rejected_reward": self.rejected_reward, "source": self.source, "chain_ids": list(self.chain_ids),
                "chosen_truncated": self.chosen_truncated, "rejected_truncated": self.rejected_truncated}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preference":
        return cls(**{**data, "chain_ids": tuple(data["chain_ids"])})


def training_preferences(chains: Iterable[ChainAnswers], config: DistillationConfig, barred: set[str]) -> list[Preference]:
    """The preference pairs of a run, oldest chains first: no pair of a barred (evaluation) prompt,
    none whose chosen answer loops (max_repetition: the student would learn to prefer looping), each
    (prompt, chosen, rejected) once, at most max_pairs."""
    kept: dict[tuple[str, str, str], Preference] = {}
    for group in by_prompt(chains):
        if normalise_prompt(group[0].prompt) in barred:
            continue
        for record in preference_records(group, config.min_margin):
            pair = Preference.of(record)
            if config.max_repetition is not None and repeated_share(pair.chosen) > config.max_repetition:
                continue
            kept.setdefault((pair.prompt, pair.chosen, pair.rejected), pair)
    pairs = list(kept.values())
    return pairs if config.max_pairs is None else pairs[: config.max_pairs]


def run_preferences(session: Session, config: DistillationConfig, task: TaskSpec, examples: Sequence[Example]) -> list[Preference]:
    """What a preference run of `config` trains on: its chains' pairs, none of a prompt it is
    evaluated on (`examples`, the pairs matching its filter, decide a held-out split)."""
    held_out = plan_split(examples, config, task.eval_prompts)[1]
    barred = barred_prompts(config, task.eval_prompts) | {normalise_prompt(prompt) for prompt in held_out}
    chains = (ChainAnswers(*row) for row in session.execute(training_chains(config)))
    return training_preferences(chains, config, barred)
