"""The store on SQLite and Postgres: migrations from empty, round trips, idempotent writes."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import func, select

from shared.db.models import ChainRecord, ChainStep, Job, Pair
from shared.db.session import make_engine, transaction, upgrade
from shared.db.store import record_chains
from shared.critique_revise import Chain, Step


def _traces() -> list[Chain]:
    moved = Chain(0, 0, "Review film A", "awful film", -0.6, [Step("too harsh", "a fine film", 0.5, True)], "a fine film", 0.5)
    stayed = Chain(1, 0, "Review film B", "great film", 0.8, [Step("fine", "ok film", 0.1, False)], "great film", 0.8)
    return [moved, stayed]


def _job(session, job_id: str = "job1") -> str:
    session.add(Job(id=job_id, task_name="sentiment", kind="cli", total=2, prompts=["Review film A", "Review film B"]))
    session.flush()
    return job_id


def test_migrations_apply_from_empty_and_are_idempotent(db_url):
    upgrade(db_url)
    upgrade(db_url)
    tables = set(sa.inspect(make_engine(db_url)).get_table_names())
    assert {"tasks", "jobs", "chains", "chain_steps", "pairs", "distillation_runs", "students", "alembic_version"} <= tables


def test_chains_and_pairs_round_trip(db):
    with transaction(db) as session:
        recorded = record_chains(session, job_id=_job(session), task_name="sentiment", acceptance="improve", traces=_traces())
    assert (recorded.chains, recorded.pairs) == (2, 1)
    with db() as session:
        chains = session.scalars(select(ChainRecord).order_by(ChainRecord.prompt_index)).all()
        assert [c.accepted for c in chains] == [True, False]
        assert chains[0].steps[0].critique == "too harsh" and chains[0].steps[0].accepted
        pair = session.scalars(select(Pair)).one()
        assert (pair.prompt, pair.response) == ("Review film A", "a fine film")
        assert abs(pair.reward_gain - 1.1) < 1e-9 and pair.chain_id == chains[0].id


def test_duplicate_insert_is_a_no_op(db):
    with transaction(db) as session:
        job_id = _job(session)
        record_chains(session, job_id=job_id, task_name="sentiment", acceptance="improve", traces=_traces())
    with transaction(db) as session:  # a retried batch writes the same keys again
        again = record_chains(session, job_id=job_id, task_name="sentiment", acceptance="improve", traces=_traces())
    assert (again.chains, again.pairs) == (0, 0)
    with db() as session:
        assert session.scalar(select(func.count(ChainRecord.id))) == 2
        assert session.scalar(select(func.count(ChainStep.id))) == 2
        assert session.scalar(select(func.count(Pair.id))) == 1


def test_failed_transaction_leaves_nothing(db):
    try:
        with transaction(db) as session:
            record_chains(session, job_id=_job(session), task_name="sentiment", acceptance="improve", traces=_traces())
            raise RuntimeError("crash after writing, before commit")
    except RuntimeError:
        pass
    with db() as session:
        assert session.scalar(select(func.count(Job.id))) == 0
        assert session.scalar(select(func.count(Pair.id))) == 0
