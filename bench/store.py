"""The store: insert pairs the way a job commits them, then export them as JSONL through the API.

For each database (SQLite file, a fresh Postgres database) the benchmark stores pairs in two
rounds up to `--small` and then `--large` pairs through the job commit path (`record_chains`:
chain, step and pair rows, idempotent inserts, one transaction per `--batch` chains), and after
each round exports every pair through a real `dsc teacher serve` process
(`GET /v1/pairs/export?format=jsonl`, admin token, streamed). It reports insert and export rows/s
and the teacher's resident memory: before the export and the peak while it streamed, sampled
from /proc every 20 ms. A fresh teacher process serves each export, so one export's peak cannot
hide in another's.

Target: the export's memory stays flat as the pairs grow — the peak growth during the export of
`--large` pairs is within 32 MiB of that of `--small` pairs, on both databases.

    .venv/bin/python bench/store.py [--small 10000] [--large 100000] [--batch 1000]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import httpx

from shared.db.session import upgrade
from teacher_process import fresh_database, start_teacher, stop, teacher_env, wait_ready

ADMIN = "bench-store-admin"
DATABASE = "dsc_bench_store"
FLAT_MIB = 32.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def insert_pairs(db_url: str, start: int, stop: int, batch: int) -> float:
    """Store pairs start..stop-1 as accepted one-step chains of one job; returns seconds."""
    from shared.db.models import Job
    from shared.db.session import make_engine, session_factory
    from shared.db.store import record_chains
    from shared.critique_revise import Chain, Step

    engine = make_engine(db_url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        if session.get(Job, "bench-store") is None:
            session.add(Job(id="bench-store", kind="cli", task_name="sentiment", status="succeeded"))
    began = time.perf_counter()
    for first in range(start, stop, batch):
        traces = []
        for i in range(first, min(first + batch, stop)):
            prompt = f"Write a short review of film number {i}, which I did not enjoy."
            initial = f"Film {i} was dull and far too long; I would not watch it again."
            revised = f"Film {i} has a patient pace and some lovely moments; worth a look on a quiet evening."
            traces.append(Chain(prompt_index=i, chain_index=0, prompt=prompt, initial_text=initial, initial_reward=-0.4,
                                steps=[Step("Be kinder and more balanced.", revised, 0.7, True)], final_text=revised, final_reward=0.7))
        with sessions() as session, session.begin():
            record_chains(session, job_id="bench-store", task_name="sentiment", acceptance="improve", traces=traces)
    seconds = time.perf_counter() - began
    engine.dispose()
    return seconds


def export_pairs(env: dict[str, str], log_path: Path, expected: int) -> dict:
    """Export every pair through a fresh teacher; rows/s and the teacher's memory around it."""
    process, url = start_teacher(env, log_path)
    try:
        wait_ready(process, url, log_path)  # the engine loaded, so its load is not counted as the export's memory
        before = rss_mib(process.pid)
        peak, streaming = before, threading.Event()
        streaming.set()

        def sample() -> None:
            nonlocal peak
            while streaming.is_set():
                peak = max(peak, rss_mib(process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lines, began = 0, time.perf_counter()
        with httpx.stream("GET", f"{url}/v1/pairs/export", params={"format": "jsonl"},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line:
                    json.loads(line)
                    lines += 1
        seconds = time.perf_counter() - began
        streaming.clear()
        sampler.join()
    finally:
        stop(process)
    if lines != expected:
        raise SystemExit(f"the export gave {lines} lines, expected {expected}")
    return {"export_s": round(seconds, 2), "export_rows_per_s": round(lines / seconds), "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak, 1), "rss_growth_mib": round(peak - before, 1)}


def run_backend(name: str, db_url: str, args, work: Path) -> list[dict]:
    env = teacher_env(db_url, work / f"data-{name}", DSC_ADMIN_TOKEN=ADMIN, DSC_API_KEYS="bench-store-key", DSC_JOB_WORKERS="0",
                      DSC_TEACHER_THREADS="1")
    rows, stored = [], 0
    for size in (args.small, args.large):
        seconds = insert_pairs(db_url, stored, size, args.batch)
        row = {"database": name, "pairs": size, "inserted": size - stored, "insert_s": round(seconds, 1),
               "insert_rows_per_s": round((size - stored) / seconds)}
        stored = size
        row.update(export_pairs(env, work / f"teacher-{name}-{size}.log", size))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="chains per commit (a job batch commits its chains in one transaction)")
    parser.add_argument("--postgres", default=os.environ.get("DSC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")

    from rich.console import Console
    from rich.table import Table

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsc-bench-store-") as tmp:
        work = Path(tmp)
        sqlite_url = f"sqlite:///{work / 'store.db'}"
        upgrade(sqlite_url)
        rows += run_backend("sqlite", sqlite_url, args, work)
        with fresh_database(args.postgres, DATABASE) as pg_url:
            rows += run_backend("postgres", pg_url, args, work)
    load_after = os.getloadavg()

    table = Table(title=f"store: pairs inserted through the job commit path ({args.batch} chains a transaction), exported as JSONL through the teacher")
    for column in ("database", "pairs", "insert rows/s", "export s", "export rows/s", "teacher RSS before (MiB)", "peak during export", "growth"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["database"], f"{row['pairs']:,}", f"{row['insert_rows_per_s']:,}", f"{row['export_s']:.1f}",
                      f"{row['export_rows_per_s']:,}", f"{row['rss_before_mib']:.0f}", f"{row['rss_peak_mib']:.0f}", f"{row['rss_growth_mib']:.1f}")
    console = Console()
    console.print(table)
    met, extra = {}, {}
    for name in ("sqlite", "postgres"):
        small, large = (row for row in rows if row["database"] == name)
        extra[name] = round(large["rss_growth_mib"] - small["rss_growth_mib"], 1)
        met[f"{name}_export_memory_flat"] = extra[name] <= FLAT_MIB
    console.print(f"export memory growth, {args.large:,} pairs over {args.small:,}: sqlite {extra['sqlite']:+.1f} MiB, "
                  f"postgres {extra['postgres']:+.1f} MiB (target ≤ {FLAT_MIB:.0f} MiB); machine: {platform.machine()}, "
                  f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(json.dumps({"bench": "store", "small": args.small, "large": args.large, "rows": rows, "extra_growth_mib": extra,
                      "target_mib": FLAT_MIB, "met": met, "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2)}))


if __name__ == "__main__":
    main()
