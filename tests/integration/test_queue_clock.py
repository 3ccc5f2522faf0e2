"""Leases are measured by the database's clock: a replica whose own clock runs ahead must not see a
live lease as expired and steal the row (Postgres; a SQLite file has one host and one clock).

The skewed replica is a real process whose clock libfaketime moves 10 minutes ahead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.db.models import DistillationRun as Run
from shared.db.queue import claim, heartbeat
from shared.db.session import make_engine, session_factory, transaction, upgrade

ROOT = Path(__file__).resolve().parents[2]
CLAIM = """
import sys
from datetime import datetime, timezone
from shared.db.models import DistillationRun as Run
from shared.db.queue import claim
from shared.db.session import make_engine, session_factory
assert datetime.now(timezone.utc).year >= 2000
sessions = session_factory(make_engine(sys.argv[1]))
row = claim(sessions, Run, "skewed-replica", 60)
print("skew-check", datetime.now(timezone.utc).isoformat(), "claimed" if row is not None else "nothing")
"""


def _claim_from_the_future(url: str, shift: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "FAKETIME": shift,
           "FAKETIME_DONT_RESET": "1"}
    result = subprocess.run(["faketime", "-f", shift, sys.executable, "-c", CLAIM, url], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.postgres
def test_a_replica_whose_clock_runs_ahead_does_not_steal_a_live_lease(postgres_url):
    if shutil.which("faketime") is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime; .ci/run installs it)")
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        session.add(Run(task_name="sentiment"))
    held = claim(sessions, Run, "honest-replica", 60)
    assert held is not None

    # The skewed process really lives 10 minutes ahead (its own clock says so), yet finds nothing to claim.
    out = _claim_from_the_future(postgres_url, "+10m")
    assert "skew-check" in out and out.strip().endswith("nothing"), out
    # It renews nothing either: the honest replica's heartbeat still holds, by the server's clock.
    assert heartbeat(sessions, Run, held.id, "honest-replica", held.attempt, 60)

    # Control: once the lease really expires by the server's clock, the same skewed process rescues the row.
    with transaction(sessions) as session:
        session.execute(Run.__table__.update().values(lease_expires_at=Run.lease_expires_at - __import__("datetime").timedelta(minutes=2)))
    assert _claim_from_the_future(postgres_url, "+10m").strip().endswith("claimed")
    engine.dispose()
