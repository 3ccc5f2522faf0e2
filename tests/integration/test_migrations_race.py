"""Replicas that start together on a fresh Postgres migrate it once between them: each service
runs the migrations at start, and without a lock two of them both created alembic_version and
one died on a unique violation."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from shared.db.session import make_engine


def test_three_processes_migrating_a_fresh_postgres_at_once_all_succeed(postgres_url):
    code = f"from shared.db.session import upgrade; upgrade({postgres_url!r})"
    processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(process.wait(120), process.stderr.read()) for process in processes]
    assert all(status == 0 for status, _ in results), [err[-800:] for status, err in results if status]
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    from alembic.script import ScriptDirectory
    from shared.db.session import alembic_config

    assert versions == [ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()]
