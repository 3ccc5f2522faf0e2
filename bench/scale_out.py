"""One job, 1 vs 2 teacher processes on one Postgres: prompts per minute.

The same job (the sentiment task's first N prompts, 1 chain, 1 step, small max_tokens, a fixed
seed) is processed by one `dsc teacher serve` process, then by two, each a fresh job on a
database of its own (`dsc_bench`, created here and dropped after). Every process uses the
transformers engine with ONE torch thread (DSC_TEACHER_THREADS=1) and one job worker, and the job
is cut into small batches (DSC_JOB_BATCH_SIZE) so they spread over the processes. On a 2-core
machine, 2 processes × 1 thread against 1 process × 1 thread is the honest comparison: the second
process gets the second core, nothing more.

Each process is warmed up (one synchronous call) before the job is submitted. The time is the
job's own, from its first batch claimed (started_at) to its last batch committed (finished_at).

    .venv/bin/python bench/scale_out.py [--prompts 64] [--batch-size 8] [--max-tokens 8]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from teacher_process import fresh_database, start_teacher, stop, teacher_env, wait_ready

KEY = "bench-scale-out-key"
DATABASE = "dsc_bench"


def run_job(processes: int, args, env: dict[str, str], db_url: str, work: Path) -> dict:
    """Start `processes` teachers, warm each up, run one job across them, stop them."""
    from shared.db.models import Job, JobBatch

    headers = {"Authorization": f"Bearer {KEY}"}
    teachers = []
    try:
        for i in range(processes):
            log_path = work / f"teacher-{processes}-{i}.log"
            process, url = start_teacher(env, log_path)
            teachers.append((process, url, log_path))
        for process, url, log_path in teachers:
            wait_ready(process, url, log_path)
            warm = httpx.post(f"{url}/v1/critique-revise", headers=headers, timeout=300,
                              json={"task": "sentiment", "limit": 2, "max_tokens": args.max_tokens, "store": False, "seed": 0})
            warm.raise_for_status()
        spec = {"task": "sentiment", "limit": args.prompts, "chains": 1, "steps": 1, "acceptance": "improve",
                "max_tokens": args.max_tokens, "seed": 7}
        response = httpx.post(f"{teachers[0][1]}/v1/jobs", headers=headers, json=spec, timeout=60)
        response.raise_for_status()
        job_id = response.json()["id"]
        while (body := httpx.get(f"{teachers[0][1]}/v1/jobs/{job_id}", headers=headers, timeout=30).json())["status"] in ("queued", "running"):
            time.sleep(0.5)
        if body["status"] != "succeeded":
            raise SystemExit(f"the job ended {body['status']}: {body.get('error')}")
        pids = {str(process.pid): f"process {i + 1}" for i, (process, _, _) in enumerate(teachers)}
    finally:
        for process, _, _ in teachers:
            stop(process)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        started, finished, done, accepted = connection.execute(
            select(Job.started_at, Job.finished_at, Job.done, Job.accepted).where(Job.id == job_id)).one()
        owners = connection.scalars(select(JobBatch.committed_by).where(JobBatch.job_id == job_id)).all()
    engine.dispose()
    seconds = (finished - started).total_seconds()
    by_process = Counter(pids.get(owner.split(":")[1], "other") for owner in owners)
    return {"processes": processes, "prompts": done, "accepted": accepted, "batches": len(owners), "seconds": round(seconds, 1),
            "prompts_per_minute": round(done / seconds * 60, 1), "batches_by_process": dict(sorted(by_process.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--postgres", default=os.environ.get("DSC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help="a Postgres server URL; the benchmark creates and drops its own database there")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="dsc-scale-out-") as tmp:
        work = Path(tmp)
        for processes in (1, 2):
            with fresh_database(args.postgres, DATABASE) as db_url:  # a fresh database per configuration
                env = teacher_env(db_url, work / "data", DSC_API_KEYS=KEY, DSC_ADMIN_TOKEN="bench-admin", DSC_TEACHER_THREADS="1",
                                  OMP_NUM_THREADS="1", DSC_JOB_WORKERS="1", DSC_JOB_BATCH_SIZE=str(args.batch_size),
                                  DSC_JOB_POLL_SECONDS="0.2")
                results.append(run_job(processes, args, env, db_url, work))
    load_after = os.getloadavg()

    one, two = results
    ratio = two["prompts_per_minute"] / one["prompts_per_minute"]
    table = Table(title=f"scale-out: one job of {args.prompts} sentiment prompts, batches of {args.batch_size}, "
                        f"{args.max_tokens} max new tokens, transformers, 1 torch thread per process")
    for column in ("teacher processes", "seconds", "prompts/min", "batches", "batches by process", "accepted"):
        table.add_column(column, justify="right")
    for row in results:
        table.add_row(str(row["processes"]), f"{row['seconds']:.1f}", f"{row['prompts_per_minute']:.1f}", str(row["batches"]),
                      ", ".join(f"{k}: {v}" for k, v in row["batches_by_process"].items()), str(row["accepted"]))
    console = Console()
    console.print(table)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    console.print(f"2 processes: {ratio:.2f}x the prompts per minute of 1; machine: {machine}")
    print(json.dumps({"bench": "scale_out", "prompts": args.prompts, "batch_size": args.batch_size, "max_tokens": args.max_tokens,
                      "one_process": one, "two_processes": two, "ratio": round(ratio, 2), "cores": os.cpu_count(),
                      "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2)}))


if __name__ == "__main__":
    main()
