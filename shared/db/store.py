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


def insert_ignore(session: Session, model: type, values: dict[str, Any], conflict: Sequence[str]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id; None when the row already existed."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = pg_insert(model)
    elif dialect == "sqlite":
        statement = sqlite_insert(model)
    else:  # pragma: no cover - only Postgres and SQLite are supported
        raise RuntimeError(f"unsupported database {dialect}")
    statement = statement.values(**values).on_conflict_do_nothing(index_elements=list(conflict)).returning(model.id)
    return session.execute(statement).scalar_one_or_none()


@dataclass
class Recorded:
    chains: int  # newly stored chains (duplicates excluded)
    pairs: int  # newly stored accepted pairs


def record_chains(session: Session, *, job_id: str, task_name: str, acceptance: str, traces: Sequence[Chain], prompt_offset: int = 0) -> Recorded:
    """Store chains, their steps and accepted pairs. The caller owns the transaction."""
    recorded = Recorded(0, 0)
    for trace in traces:
        prompt_index = prompt_offset + trace.prompt_index
        key = {"job_id": job_id, "prompt_index": prompt_index, "chain_index": trace.chain_index}
        chain_id = insert_ignore(
            session,
            ChainRecord,
            {
                **key,
                "task_name": task_name,
                "prompt": trace.prompt,
                "initial_text": trace.initial_text,
                "initial_reward": trace.initial_reward,
                "final_text": trace.final_text,
                "final_reward": trace.final_reward,
                "accepted": trace.accepted,
                "acceptance": acceptance,
            },
            conflict=key,
        )
        if chain_id is None:
            continue
        recorded.chains += 1
        session.execute(
            insert(ChainStep),
            [
                {"chain_id": chain_id, "step_index": t, "critique": s.critique, "revision": s.revision, "reward": s.reward, "accepted": s.accepted}
                for t, s in enumerate(trace.steps)
            ],
        )
        if trace.accepted:
            pair_id = insert_ignore(
                session,
                Pair,
                {
                    **key,
                    "chain_id": chain_id,
                    "task_name": task_name,
                    "prompt": trace.prompt,
                    "response": trace.final_text,
                    "reward_before": trace.initial_reward,
                    "reward_after": trace.final_reward,
                    "reward_gain": trace.final_reward - trace.initial_reward,
                },
                conflict=key,
            )
            recorded.pairs += pair_id is not None
    return recorded
