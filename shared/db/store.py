"""Writes of sampler output: a chain, its steps and its pair in one transaction, idempotently.

A retried batch (a worker that lost its lease, a restarted teacher) re-inserts the same
(job, prompt index, chain index) keys; those inserts are no-ops, so no pair is ever duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db.models import ChainRecord, ChainStep, Pair
from shared.critique_revise import Chain


def _insert_ignore(session: Session, model: type) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for this session's database (Postgres or SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(model).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database {dialect}")  # pragma: no cover - only Postgres and SQLite are supported


@dataclass
class Recorded:
    chains: int  # newly stored chains (duplicates excluded)
    pairs: int  # newly stored accepted pairs


def record_chains(session: Session, *, job_id: str, task_name: str, acceptance: str, traces: Sequence[Chain], prompt_offset: int = 0) -> Recorded:
    """Store chains, their steps and accepted pairs. The caller owns the transaction.

    Three multi-row statements whatever the number of chains (chains, steps, pairs): a chain whose
    (job, prompt index, chain index) is already stored is skipped with its steps and pair."""
    if not traces:
        return Recorded(0, 0)
    by_key = {(prompt_offset + trace.prompt_index, trace.chain_index): trace for trace in traces}
    chain_rows = [
        {"job_id": job_id, "prompt_index": prompt_index, "chain_index": chain_index, "task_name": task_name, "prompt": trace.prompt,
         "initial_text": trace.initial_text, "initial_reward": trace.initial_reward, "final_text": trace.final_text,
         "final_reward": trace.final_reward, "accepted": trace.accepted, "acceptance": acceptance,
         "initial_truncated": trace.initial_truncated, "final_truncated": trace.final_truncated}
        for (prompt_index, chain_index), trace in by_key.items()
    ]
    returning = (ChainRecord.id, ChainRecord.prompt_index, ChainRecord.chain_index)
    stored = session.execute(_insert_ignore(session, ChainRecord).returning(*returning), chain_rows).all()
    if not stored:
        return Recorded(0, 0)
    new = [(chain_id, prompt_index, chain_index, by_key[(prompt_index, chain_index)]) for chain_id, prompt_index, chain_index in stored]
    step_rows = [
        {"chain_id": chain_id, "step_index": t, "critique": s.critique, "revision": s.revision, "reward": s.reward, "accepted": s.accepted,
         "truncated": s.truncated}
        for chain_id, _, _, trace in new for t, s in enumerate(trace.steps)
    ]
    if step_rows:
        session.execute(insert(ChainStep), step_rows)
    pair_rows = [
        {"job_id": job_id, "prompt_index": prompt_index, "chain_index": chain_index, "chain_id": chain_id, "task_name": task_name,
         "prompt": trace.prompt, "response": trace.final_text, "reward_before": trace.initial_reward,
         "reward_after": trace.final_reward, "reward_gain": trace.final_reward - trace.initial_reward, "truncated": trace.final_truncated}
        for chain_id, prompt_index, chain_index, trace in new if trace.accepted
    ]
    pairs = len(session.execute(_insert_ignore(session, Pair).returning(Pair.id), pair_rows).all()) if pair_rows else 0
    return Recorded(len(stored), pairs)
