"""Pair exclusion in the database and in training, on SQLite and on Postgres: migration 0005 up and
down over existing pairs, and an excluded pair never in a run's training snapshot."""

from __future__ import annotations

import json

from alembic import command
from sqlalchemy import create_engine, inspect, select, text

from console_support import store_chains
from services.teacher.routes.pairs import set_exclusion
from shared.distillation.config import DistillationConfig
from services.trainer.data import take_snapshot
from shared.db.models import Pair
from shared.db.session import alembic_config, make_engine, normalise_url, session_factory, upgrade
from shared.tasks import get_task


def _pair_columns(url: str) -> set[str]:
    engine = create_engine(normalise_url(url))
    try:
        return {column["name"] for column in inspect(engine).get_columns("pairs")}
    finally:
        engine.dispose()


def test_migration_0005_adds_the_review_columns_to_existing_pairs(db_url):
    config = alembic_config(db_url)
    command.upgrade(config, "0004")
    raw = create_engine(normalise_url(db_url))
    with raw.begin() as connection:  # a pair stored before 0005, in 0004's schema
        connection.execute(text("INSERT INTO jobs (id, kind, task_name, status, params, prompts, total, done, accepted, cancel_requested, "
                                "attempt, failures, created_at) VALUES ('old', 'cli', 'sentiment', 'succeeded', '{}', '[]', 1, 1, 1, "
                                ":no, 0, 0, CURRENT_TIMESTAMP)"), {"no": False})
        connection.execute(text("INSERT INTO chains (id, job_id, task_name, prompt_index, chain_index, prompt, initial_text, initial_reward, "
                                "final_text, final_reward, accepted, acceptance, created_at) VALUES (1, 'old', 'sentiment', 0, 0, 'p', "
                                "'a', 0.0, 'b', 0.5, :yes, 'improve', CURRENT_TIMESTAMP)"), {"yes": True})
        connection.execute(text("INSERT INTO pairs (id, chain_id, job_id, task_name, prompt_index, chain_index, prompt, response, "
                                "reward_before, reward_after, reward_gain, created_at) VALUES (1, 1, 'old', 'sentiment', 0, 0, 'p', 'b', "
                                "0.0, 0.5, 0.5, CURRENT_TIMESTAMP)"))
    raw.dispose()
    assert "excluded" not in _pair_columns(db_url)

    upgrade(db_url)
    assert {"excluded", "excluded_reason", "excluded_at"} <= _pair_columns(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    with sessions() as session:
        pair = session.get(Pair, 1)
        assert (pair.excluded, pair.excluded_reason, pair.excluded_at) == (False, None, None)
    assert set_exclusion(sessions, 1, "duplicate").excluded is True
    engine.dispose()

    command.downgrade(config, "0004")
    assert not {"excluded", "excluded_reason", "excluded_at"} & _pair_columns(db_url)
    raw = create_engine(normalise_url(db_url))
    with raw.connect() as connection:  # the pair itself survives the downgrade
        assert connection.execute(text("SELECT response FROM pairs WHERE id = 1")).scalar_one() == "b"
    raw.dispose()
    upgrade(db_url)
    assert "excluded" in _pair_columns(db_url)


def test_an_excluded_pair_never_trains(db, tmp_path):
    prompts = [f"Review the film number {i}." for i in range(8)]  # even indexes are accepted: 4 pairs
    store_chains(db, prompts, job_id="job-review")
    with db() as session:
        pairs = list(session.scalars(select(Pair).order_by(Pair.id)))
    assert len(pairs) == 4
    excluded = set_exclusion(db, pairs[1].id, "answers a different question")
    assert (excluded.excluded, excluded.excluded_reason) == (True, "answers a different question") and excluded.excluded_at is not None

    config = DistillationConfig(task="sentiment", jobs=["job-review"], eval_prompts=["Review the film Heat."], best_per_prompt=False,
                                min_reward=-1.0)
    with db() as session:
        snapshot = take_snapshot(session, config, get_task(session, "sentiment"), tmp_path / "run")
    assert sorted(example.pair_id for example in snapshot.train) == [pairs[0].id, pairs[2].id, pairs[3].id]
    assert pairs[1].prompt not in {example.prompt for example in snapshot.train}
    assert json.loads((tmp_path / "run" / "split.json").read_text())["pairs_selected"] == 3

    # undone, it trains again (a new run's snapshot)
    set_exclusion(db, pairs[1].id, None)
    with db() as session:
        again = take_snapshot(session, config, get_task(session, "sentiment"), tmp_path / "run-2")
    assert len(again.train) == 4
