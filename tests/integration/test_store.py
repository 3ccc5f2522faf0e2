"""The store on SQLite and Postgres: migrations from empty, round trips, idempotent writes."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import func, select

from shared.db.models import ChainRecord, ChainStep, Job, Pair
from shared.db.session import make_engine, transaction, upgrade
from shared.db.store import record_chains
from shared.critique_revise import Chain, Step


def _traces() -> list[Chain]:
    moved = Chain(0, 0, "Review film A", "awful film", -0.6, [Step("too harsh", "a fine film", 0.5, True, truncated=True)], "a fine film", 0.5,
                  final_truncated=True)
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
        assert [(c.initial_truncated, c.final_truncated) for c in chains] == [(False, True), (False, False)]
        assert [chains[0].steps[0].truncated, chains[1].steps[0].truncated] == [True, False]
        pair = session.scalars(select(Pair)).one()
        assert (pair.prompt, pair.response, pair.truncated) == ("Review film A", "a fine film", True)
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


def test_partly_stored_batch_links_steps_and_pairs_to_their_own_chains(db):
    """A retried batch whose first chains are stored: only the new ones are written, each step and
    pair on the chain of its own (prompt, chain) key, however the database orders what it returns."""
    def chain(i: int, moved: bool) -> Chain:
        final = f"kind answer {i}" if moved else f"answer {i}"
        return Chain(i, i % 2, f"prompt {i}", f"answer {i}", -0.1 * i, [Step(f"critique {i}", f"kind answer {i}", 0.1 * i, moved)], final,
                     0.1 * i if moved else -0.1 * i)

    traces = [chain(i, moved=i % 3 != 0) for i in range(12)]
    with transaction(db) as session:
        job_id = _job(session)
        first = record_chains(session, job_id=job_id, task_name="sentiment", acceptance="improve", traces=traces[:5])
    with transaction(db) as session:
        rest = record_chains(session, job_id=job_id, task_name="sentiment", acceptance="improve", traces=list(reversed(traces)))
    assert (first.chains, rest.chains) == (5, 7)
    assert first.pairs + rest.pairs == sum(t.accepted for t in traces) == 8
    with db() as session:
        for stored in session.scalars(select(ChainRecord)):
            i = stored.prompt_index
            assert (stored.prompt, stored.chain_index) == (f"prompt {i}", i % 2)
            assert [step.critique for step in stored.steps] == [f"critique {i}"]
        for pair in session.scalars(select(Pair)):
            owner = session.get(ChainRecord, pair.chain_id)
            assert (owner.prompt_index, pair.prompt, pair.response) == (pair.prompt_index, f"prompt {pair.prompt_index}", f"kind answer {pair.prompt_index}")
