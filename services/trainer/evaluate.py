"""Base model vs student on held-out prompts, scored with the task's own reward.

Both answer every prompt with the same sampling settings and the same seed, in one batch each;
the task's reward scores both. The teacher's revision rewards for the same prompts (the final
reward of the stored critique→revise chains, where any exist) complete the picture: the student
should move from the base towards the teacher.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Chain
from shared.engines.base import Engine, SamplingParams
from shared.rewards.base import RewardModel


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"n": len(values), "mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def teacher_rewards(session: Session, task_name: str, prompts: Sequence[str]) -> dict[str, float]:
    """Mean final reward of the stored chains per prompt (only prompts that have chains)."""
    found: dict[str, list[float]] = {}
    for chunk_start in range(0, len(prompts), 500):
        chunk = list(prompts[chunk_start:chunk_start + 500])
        rows = session.execute(select(Chain.prompt, Chain.final_reward).where(Chain.task_name == task_name, Chain.prompt.in_(chunk)))
        for prompt, reward in rows:
            found.setdefault(prompt, []).append(float(reward))
    return {prompt: statistics.fmean(values) for prompt, values in found.items()}


@dataclass
class Evaluation:
    prompts: list[str]
    base_texts: list[str]
    student_texts: list[str]
    base_rewards: list[float]
    student_rewards: list[float]
    teacher: dict[str, float]  # prompt → teacher revision reward, where known

    def metrics(self, examples: int) -> dict[str, Any]:
        improved = [s > b for s, b in zip(self.student_rewards, self.base_rewards)]
        teacher_values = [self.teacher[p] for p in self.prompts if p in self.teacher]
        order = sorted(range(len(self.prompts)), key=lambda i: self.student_rewards[i] - self.base_rewards[i], reverse=True)
        return {
            "prompts": len(self.prompts),
            "base": summary(self.base_rewards),
            "student": summary(self.student_rewards),
            "teacher_revision": summary(teacher_values),
            "improved_share": round(sum(improved) / len(improved), 4) if improved else None,
            "mean_gain": round(statistics.fmean(s - b for s, b in zip(self.student_rewards, self.base_rewards)), 4) if improved else None,
            "examples": [
                {"prompt": self.prompts[i], "base": self.base_texts[i], "student": self.student_texts[i],
                 "base_reward": round(self.base_rewards[i], 4), "student_reward": round(self.student_rewards[i], 4),
                 "teacher_reward": None if self.prompts[i] not in self.teacher else round(self.teacher[self.prompts[i]], 4)}
                for i in order[:examples]
            ],
        }


def evaluate(
    base: Engine,
    student: Engine,
    reward: RewardModel,
    prompts: Sequence[str],
    params: SamplingParams,
    teacher: dict[str, float] | None = None,
) -> Evaluation:
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    base_texts = [g.text for g in base.generate(conversations, params)]
    student_texts = [g.text for g in student.generate(conversations, params)]
    return Evaluation(
        prompts=list(prompts),
        base_texts=base_texts,
        student_texts=student_texts,
        base_rewards=[float(x) for x in reward.score(list(prompts), base_texts)],
        student_rewards=[float(x) for x in reward.score(list(prompts), student_texts)],
        teacher=dict(teacher or {}),
    )
