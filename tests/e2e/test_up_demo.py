"""`dsc up` against Postgres, then the demo flow over HTTP with small sizes, then Ctrl-C.

Everything is real: three service processes, the bundled model, the trainer, the database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from live_server import free_port, wait_ready
from services.demo import DemoConfig, run_demo
from shared.db.models import Pair, Student
from shared.db.session import make_engine, session_factory


@pytest.mark.timeout(1500)
def test_dsc_up_runs_the_demo_flow_and_stops_cleanly(tmp_path, model_store, postgres_url):
    teacher_port, student_port = free_port(), free_port()
    env = {
        **os.environ,
        "DSC_DATA_DIR": str(tmp_path / "data"),
        "DSC_MODEL_STORE": str(model_store),
        "DSC_DATABASE_URL": postgres_url,
        "DSC_ENGINE": "transformers",
        "DSC_API_KEYS": "client-key-e2e",
        "DSC_ADMIN_TOKEN": "admin-token-e2e",
        "DSC_TEACHER_PORT": str(teacher_port),
        "DSC_STUDENT_PORT": str(student_port),
        "DSC_JOB_BATCH_SIZE": "8",
        "DSC_DISTILL_MIN_PAIRS": "2",  # 8 prompts; a looping answer (max_repetition) may leave fewer than the default 8 pairs
    }
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for port in (teacher_port, student_port):
            wait_ready(f"http://127.0.0.1:{port}", alive=lambda: up.poll() is None, timeout=600, what="dsc up", interval=1)
        config = DemoConfig(train_prompts=8, eval_prompts=2, samples=2, chains=2, max_tokens=24, max_steps=4, acceptance="always",
                            min_reward=-1.0, out_dir=tmp_path / "demo", force_promotion=True)
        summary = run_demo(f"http://127.0.0.1:{teacher_port}", f"http://127.0.0.1:{student_port}", "client-key-e2e", "admin-token-e2e", config)

        figures = summary["figures"]
        assert 0 < summary["pairs"] <= min(8, summary["accepted_chains"])  # the best chain of each of the 8 prompts
        assert figures["samples"] == 2 and all(figures["systems"][name]["n"] == 2 for name in ("base", "student", "teacher"))
        assert figures["gain_share"]["n"] == 2 and summary["forced_promotion"] is True  # 2 prompts can never be significant
        assert summary["promotable"] is False and "too few" in summary["gate"]
        second = figures["second_opinion"]  # the sentiment task's second opinion, on every system the table shows
        assert second["scorer"] == "textblob" and all(second["systems"][name]["n"] == 2 for name in ("base", "student", "teacher"))
        assert "repeated_3grams_minus_base" in figures["degeneration"]
        assert (tmp_path / "demo" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        cost = summary["served_cost"]  # seconds per answer through the services, at 1 and 8 clients
        assert set(cost) == {1, 8}, cost
        for level in cost.values():
            assert level["student"] > 0 and level["base"] > 0 and level["chain"] > 0, cost
            assert level["chain/student"] == round(level["chain"] / level["student"], 2), cost
        engine = make_engine(postgres_url)
        with session_factory(engine)() as session:
            assert session.scalar(select(func.count(Pair.id))) == summary["accepted_chains"]
            active = session.scalars(select(Student).where(Student.active)).all()
            assert len(active) == 1 and active[0].task_name == "sentiment"
            promotion = active[0].metrics["promotion"]  # the forced promotion keeps what it overrode and why
            assert promotion["forced"] is True and promotion["reason"] == "dsc demo --force-promotion" and "too few" in promotion["overrode"]
        engine.dispose()
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output
    for port in (teacher_port, student_port):  # every child is gone: the ports are free again
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
