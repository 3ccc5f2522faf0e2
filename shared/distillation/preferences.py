"""Preference pairs from stored chains: what `GET /v1/pairs/export?format=preference` streams, in
TRL's conversational preference format (`prompt`, `chosen`, `rejected`) with both rewards and
their margin.

Two comparisons come out of a prompt's chains, each ordered by the task's reward (never by the
chain's own verdict, which under `always` acceptance may keep a worse revision):

- `revision`: a chain's first draft against its final answer, where they differ;
- `chains`: the best final answer of the prompt's chains against the worst, where the prompt has
  more than one chain and they differ.

A tie (equal rewards) prefers nothing and is left out, as is a pair below the caller's minimum margin (the export's `min_gain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence


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


def _record(kind: str, chain: ChainAnswers, a: tuple[str, float], b: tuple[str, float], chain_ids: list[int]) -> dict[str, Any] | None:
    (chosen, chosen_reward), (rejected, rejected_reward) = sorted((a, b), key=lambda item: item[1], reverse=True)
    if chosen == rejected or chosen_reward == rejected_reward:
        return None
    return {
        "prompt": [{"role": "user", "content": chain.prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "chosen_reward": chosen_reward, "rejected_reward": rejected_reward, "margin": chosen_reward - rejected_reward,
        "source": kind, "task": chain.task_name, "job_id": chain.job_id, "chain_ids": chain_ids,
    }


def preference_records(chains: Sequence[ChainAnswers], min_margin: float | None = None) -> list[dict[str, Any]]:
    """The preference pairs of one prompt's chains (of one job), revision pairs first."""
    records = [_record("revision", chain, (chain.final_text, chain.final_reward), (chain.initial_text, chain.initial_reward), [chain.id])
               for chain in chains]
    if len(chains) > 1:
        best = max(chains, key=lambda chain: (chain.final_reward, -chain.id))
        worst = min(chains, key=lambda chain: (chain.final_reward, chain.id))
        records.append(_record("chains", best, (best.final_text, best.final_reward), (worst.final_text, worst.final_reward),
                               [best.id, worst.id]))
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
