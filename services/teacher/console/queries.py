"""Reads only the console needs (the API has none of them): per-job reward figures, chains with
their steps for review, a job's failed batches, and the token counts of the cost page."""

from __future__ import annotations

import functools
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import ChainRecord, DistillationRun, JobBatch, Pair, Student

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFigures:
    chains: int
    accepted: int
    excluded: int
    reward_before: float | None  # mean reward of the first answers
    reward_after: float | None  # mean reward of the final answers (accepted revisions, else the first answer)

    @property
    def accepted_share(self) -> float | None:
        return self.accepted / self.chains if self.chains else None


def job_figures(session: Session, job_ids: list[str]) -> dict[str, JobFigures]:
    if not job_ids:
        return {}
    rows = session.execute(
        select(ChainRecord.job_id, func.count(), func.sum(case((ChainRecord.accepted.is_(True), 1), else_=0)),
               func.avg(ChainRecord.initial_reward), func.avg(ChainRecord.final_reward))
        .where(ChainRecord.job_id.in_(job_ids)).group_by(ChainRecord.job_id)
    ).all()
    excluded = dict(session.execute(
        select(Pair.job_id, func.count()).where(Pair.job_id.in_(job_ids), Pair.excluded.is_(True)).group_by(Pair.job_id)
    ).all())
    return {job_id: JobFigures(chains, int(accepted or 0), excluded.get(job_id, 0), before, after)
            for job_id, chains, accepted, before, after in rows}


def failed_batches(session: Session, job_id: str) -> list[JobBatch]:
    """The job's batches that failed at least once, with the last error each recorded."""
    return list(session.scalars(
        select(JobBatch).where(JobBatch.job_id == job_id, or_(JobBatch.failures > 0, JobBatch.error.is_not(None))).order_by(JobBatch.start)
    ))


@dataclass(frozen=True)
class ChainFilter:
    task: str | None = None
    job: str | None = None
    accepted: bool | None = None
    min_gain: float | None = None
    excluded: bool | None = None  # True: excluded pairs only; False: everything that is not an excluded pair


def browse_chains(session: Session, where: ChainFilter, *, before: int | None, limit: int) -> tuple[list[tuple[ChainRecord, Pair | None]], int | None]:
    """Chains newest first with their steps and their pair (None: not accepted), and the cursor of
    the next page (keyset on the chain id, so pages hold still while jobs add chains)."""
    query = (select(ChainRecord, Pair).outerjoin(Pair, Pair.chain_id == ChainRecord.id).options(selectinload(ChainRecord.steps))
             .order_by(ChainRecord.id.desc()).limit(limit + 1))
    if where.task is not None:
        query = query.where(ChainRecord.task_name == where.task)
    if where.job is not None:
        query = query.where(ChainRecord.job_id == where.job)
    if where.accepted is not None:
        query = query.where(ChainRecord.accepted.is_(where.accepted))
    if where.min_gain is not None:
        query = query.where(ChainRecord.final_reward - ChainRecord.initial_reward >= where.min_gain)
    if where.excluded is True:
        query = query.where(Pair.excluded.is_(True))
    elif where.excluded is False:
        query = query.where(or_(Pair.id.is_(None), Pair.excluded.is_(False)))
    if before is not None:
        query = query.where(ChainRecord.id < before)
    rows = [(chain, pair) for chain, pair in session.execute(query).all()]
    page = rows[:limit]
    return page, page[-1][0].id if len(rows) > limit else None


# --- cost -----------------------------------------------------------------------------------------

COST_SAMPLE = 200  # chains re-tokenised per task: the page stays fast however many chains exist


@functools.lru_cache(maxsize=4)
def token_counter(model: str, store: Path) -> tuple[Callable[[str], int], str]:
    """(count, how): the model's own tokenizer where it loads here, else ~4 characters a token."""
    try:
        from transformers import AutoTokenizer

        from shared.model_store import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model, store))
        return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), f"{Path(model).name}'s tokenizer"
    except Exception as error:  # a remote model (engine=openai), a hub id offline
        log.info("cost page: no tokenizer for %s (%s); estimating 4 characters a token", model, error)
        return (lambda text: max(1, round(len(text) / 4))), "about 4 characters a token"


@dataclass(frozen=True)
class TaskCost:
    task: str
    chains: int
    pairs: int
    excluded: int
    sampled_chains: int
    teacher_tokens_per_chain: float | None  # generated: first answer + every critique and revision
    student: Student | None  # the active student, else the newest
    student_tokens_per_answer: float | None
    base_tokens_per_answer: float | None
    student_answers: int

    @property
    def teacher_tokens_per_pair(self) -> float | None:
        """All generated tokens of the task's chains (accepted or not) over the pairs they left."""
        if self.teacher_tokens_per_chain is None or not self.pairs:
            return None
        return self.teacher_tokens_per_chain * self.chains / self.pairs

    @property
    def training_pairs(self) -> int:
        return self.pairs - self.excluded


def _mean(values: list[int]) -> float | None:
    return statistics.fmean(values) if values else None


def task_costs(session: Session, teacher_tokens: Callable[[str], int], student_tokens: Callable[[str, str], int]) -> list[TaskCost]:
    """Per task: teacher tokens per chain (from a sample of its newest chains) and student tokens
    per answer (the answers its student's evaluation kept). `student_tokens(base_model, text)`."""
    chains = dict(session.execute(select(ChainRecord.task_name, func.count()).group_by(ChainRecord.task_name)).all())
    pairs = dict(session.execute(select(Pair.task_name, func.count()).group_by(Pair.task_name)).all())
    excluded = dict(session.execute(select(Pair.task_name, func.count()).where(Pair.excluded.is_(True)).group_by(Pair.task_name)).all())
    students = list(session.scalars(select(Student).order_by(Student.active.desc(), Student.created_at.desc())))
    out = []
    for task in sorted(set(chains) | {student.task_name for student in students}):
        sample = list(session.scalars(select(ChainRecord).options(selectinload(ChainRecord.steps)).where(ChainRecord.task_name == task)
                                      .order_by(ChainRecord.id.desc()).limit(COST_SAMPLE)))
        per_chain = [teacher_tokens(chain.initial_text) + sum(teacher_tokens(step.critique) + teacher_tokens(step.revision)
                                                              for step in chain.steps) for chain in sample]
        student = next((s for s in students if s.task_name == task), None)
        examples = _evaluation_examples(session, student)
        out.append(TaskCost(
            task=task, chains=chains.get(task, 0), pairs=pairs.get(task, 0), excluded=excluded.get(task, 0), sampled_chains=len(sample),
            teacher_tokens_per_chain=_mean(per_chain), student=student,
            student_tokens_per_answer=_mean([student_tokens(student.base_model, e["student"]) for e in examples]) if student else None,
            base_tokens_per_answer=_mean([student_tokens(student.base_model, e["base"]) for e in examples]) if student else None,
            student_answers=len(examples),
        ))
    return out


def _evaluation_examples(session: Session, student: Student | None) -> list[dict]:
    """The answers the student's distillation kept from its evaluation (eval_examples of them)."""
    if student is None or student.run_id is None:
        return []
    run = session.get(DistillationRun, student.run_id)
    examples = ((run.metrics or {}).get("eval") or {}).get("examples") or [] if run is not None else []
    return [e for e in examples if isinstance(e.get("student"), str) and isinstance(e.get("base"), str)]
