"""`dsc sample` as a user runs it: a real subprocess, the real model, a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.trainer.evaluation_figures import figures_table
from shared.db.models import ChainRecord, Job, Pair
from shared.db.session import make_engine, session_factory

DSC = [sys.executable, "-m", "services.cli"]


def _run(args: list[str], data_dir: Path, model_store: Path, db_url: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSC_DATA_DIR": str(data_dir), "DSC_MODEL_STORE": str(model_store), "DSC_DATABASE_URL": db_url, **env_vars}
    return subprocess.run(DSC + args, env=env, capture_output=True, text=True, timeout=600)


def _render(table) -> str:
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


def _counts(db_url: str) -> tuple[int, int, int]:
    engine = make_engine(db_url)
    with session_factory(engine)() as session:
        counts = tuple(session.scalar(select(func.count(model.id))) for model in (Job, ChainRecord, Pair))
    engine.dispose()
    return counts


def test_sample_json_prints_and_stores_four_chains(tmp_path, model_store, db_url):
    result = _run(
        ["sample", "--task", "sentiment", "--prompts", "4", "--json", "--engine", "transformers", "--max-tokens", "24", "--seed", "3"],
        tmp_path, model_store, db_url,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert len(body["results"]) == 4 and body["job_id"]
    for chain in body["results"]:
        assert chain["initial"]["text"] and isinstance(chain["initial"]["reward"], float)
        assert len(chain["steps"]) == 1 and {"critique", "revision", "reward", "accepted"} <= set(chain["steps"][0])
        assert chain["final"]["reward"] >= chain["initial"]["reward"]  # the sentiment task accepts only improvements
    jobs, chains, pairs = _counts(db_url)
    assert (jobs, chains) == (1, 4)
    assert pairs == sum(chain["accepted"] for chain in body["results"])


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_sample_json_is_all_of_stdout_and_the_engine_logs_on_stderr(tmp_path, model_store, engine):
    """`dsc sample --json | jq` works: every log line (vLLM's own too, from its engine process as
    well) goes to stderr, as JSON; stdout is the one JSON document."""
    if engine == "vllm":
        from shared.engines.vllm_options import vllm_available

        if not vllm_available():
            pytest.skip("vLLM does not import on this machine")
    db_url = f"sqlite:///{tmp_path / 'dsc.db'}"
    args = ["sample", "--task", "sentiment", "--prompts", "1", "--json", "--engine", engine, "--max-tokens", "8", "--seed", "1"]
    result = _run(args, tmp_path, model_store, db_url, DSC_LOG_LEVEL="INFO", DSC_VLLM_ENFORCE_EAGER="true", DSC_VLLM_KV_CACHE_GIB="0.5")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)  # the whole of stdout, nothing before or after
    assert len(body["results"]) == 1 and body["job_id"]
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert all({"ts", "level", "logger", "message"} <= set(record) for record in records)
    if engine == "vllm":
        vllm_lines = [record for record in records if record["logger"].startswith("vllm")]
        assert vllm_lines, result.stderr[-3000:]
        assert any("engine" in record["logger"] for record in vllm_lines), sorted({r["logger"] for r in vllm_lines})


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["--task", "sentiment", "--steps", "0"], "steps"),
        (["--task", "sentiment", "--engine", "tpu"], "unknown engine 'tpu'"),
        (["--task", "sentiment", "--acceptance", "greedy"], "acceptance"),
        (["--task", "sentiment", "--student", "nobody"], "no student 'nobody'"),
    ],
)
def test_bad_input_is_a_clear_error_and_stores_nothing(tmp_path, model_store, args, message):
    db_url = f"sqlite:///{tmp_path / 'dsc.db'}"
    result = _run(["sample", "--prompts", "2", *args], tmp_path, model_store, db_url)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if Path(db_url.split("///")[1]).exists():
        assert _counts(db_url) == (0, 0, 0)


def test_eval_json_and_table_for_an_adapter(tmp_path, model_store, model_path, trained_adapter):
    """`dsc eval` on the test adapter (it answers one phrase to anything, naming no one): on the
    privacy evaluation prompts it cannot score below its base, and the collapse check sees it."""
    db_url = f"sqlite:///{tmp_path / 'eval.db'}"
    args = ["eval", "--task", "privacy", "--adapter", str(trained_adapter), "--base-model", str(model_path),
            "--prompts", "10", "--samples", "1", "--max-tokens", "16", "--json"]
    result = _run(args, tmp_path, model_store, db_url, DSC_ENGINE="transformers")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["prompts"] == 10 and figures["samples"] == 1
    assert figures["systems"]["student"]["value"] == 0 and figures["student_minus_base"]["value"] >= 0
    assert figures["collapse"]["collapsed"] and figures["gate"]["promotable"] is False
    rendered = _render(figures_table(figures))
    assert "student − base" in rendered and "collapsed" in rendered and "distilled student" in rendered
    missing = _run(["eval", "--task", "privacy"], tmp_path, model_store, db_url)
    assert missing.returncode == 2 and "no active student" in missing.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "a plain token is needed to call the services: pass --admin-token"),
        (["--admin-token", "t", "--teacher-url", "http://127.0.0.1:9"], "GET http://127.0.0.1:9/v1/tasks/sentiment: ConnectError"),
    ],
)
def test_distil_rounds_without_a_token_or_a_teacher_is_a_clear_error(tmp_path, model_store, args, message):
    result = _run(["distil", "--task", "sentiment", "--rounds", "2", *args], tmp_path, model_store, f"sqlite:///{tmp_path / 'dsc.db'}",
                  DSC_DEMO_ADMIN_TOKEN="")
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
