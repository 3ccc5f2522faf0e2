"""shared.logs: the ids in scope reach every line, in either format, and leave with their block;
a lease's heartbeat thread logs with the ids of the worker that claimed the row."""

from __future__ import annotations

import io
import json
import logging
from typing import Iterator

import pytest

from shared.logs import JsonFormatter, TextFormatter, log_ids, no_log_ids
from shared.settings import Settings


@pytest.fixture()
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("dsc.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_ids_in_scope_and_the_record_fields(captured):
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    with log_ids(request_id="req-1"):
        with log_ids(job_id="job-1", evaluation_id=None):
            logger.info("claimed %s", "job-1", extra={"fields": {"status": 200, "ms": 1.5}})
        logger.warning("after the job")
    logger.info("outside")
    try:
        raise ValueError("boom")
    except ValueError:
        with log_ids(distillation_id="run-1"):
            logger.exception("failed")
    first, second, third, fourth = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "claimed job-1" and first["level"] == "info" and first["logger"] == "dsc.test.logs"
    assert (first["request_id"], first["job_id"], first["status"], first["ms"]) == ("req-1", "job-1", 200, 1.5)
    assert "evaluation_id" not in first  # None is left out
    assert second["request_id"] == "req-1" and "job_id" not in second and second["level"] == "warning"
    assert not {"request_id", "job_id"} & set(third)
    assert fourth["distillation_id"] == "run-1" and "ValueError: boom" in fourth["exc"]
    assert first["ts"].endswith("+00:00")


def test_text_lines_name_the_ids_for_a_person(captured):
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    with log_ids(request_id="req-2", job_id="job-2"):
        logger.info("sampling")
        with no_log_ids():  # a signal handler inside some request's task
            logger.info("stopping")
    logger.info("idle")
    inside, stopping, outside = stream.getvalue().splitlines()
    assert inside.endswith("INFO dsc.test.logs [request_id=req-2 job_id=job-2]: sampling")
    assert stopping.endswith("INFO dsc.test.logs: stopping") and outside.endswith("INFO dsc.test.logs: idle")


def test_log_settings_read_as_an_operator_writes_them(monkeypatch):
    monkeypatch.setenv("DSC_LOG_LEVEL", "debug")
    monkeypatch.setenv("DSC_LOG_FORMAT", "text")
    assert (Settings().log_level, Settings().log_format) == ("DEBUG", "text")
    monkeypatch.setenv("DSC_LOG_LEVEL", "")
    assert Settings().log_level is None  # unset: each command's default
    monkeypatch.setenv("DSC_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


def test_a_heartbeat_logs_with_the_claimers_ids(captured, tmp_path):
    """The heartbeat runs in a thread of its own; its "lease lost" line still names the run."""
    from shared.db.models import DistillationRun
    from shared.db.queue import Heartbeat
    from shared.db.session import make_engine, session_factory, upgrade

    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    queue_log = logging.getLogger("shared.db.queue")
    queue_log.addHandler(handler)
    url = f"sqlite:///{tmp_path / 'dsc.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with log_ids(distillation_id="run-3"):
            beat = Heartbeat(session_factory(engine), DistillationRun, "no-such-run", "owner", 1, 0.15)
        with beat:  # entered outside the block: the ids were taken when the claimer built it
            assert beat.lost.wait(10)  # no such row: the first renewal is refused
    finally:
        queue_log.removeHandler(handler)
        engine.dispose()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any("lost" in line["message"] and line.get("distillation_id") == "run-3" for line in lines), lines
