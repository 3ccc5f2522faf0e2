"""What a client pays for an answer, through the running services: a promoted student against the
base model on the same student service and the teacher's critique→revise chain (1 step; 1 chain,
and the chains per prompt the student learned from), same prompts and limits, at 1, 8 and 32
concurrent clients, rounds alternating the order of the sides (services/served_cost.py says how
each side is driven).

It starts the `dsc up` stack (teacher, trainer, student; SQLite in a fresh data directory; the
settings' defaults, so compiled vLLM engines unless --eager), makes a real student through the
admin API (a sentiment job over the task's training prompts, a LoRA distillation with the trainer's
default recipe, a forced promotion: the figure is about serving, not about the gate), then
measures over the task's evaluation prompts (held out from training).

    .venv/bin/python bench/served_cost.py [--levels 1,8,32] [--answers 4,16,64] [--rounds 2] [--max-tokens 96] [--eager]

Prints a table and, last, one JSON line with the figures, `targets` and `met`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = {"chain_over_student": 3.0, "student_over_base_tokens_per_s": 0.9}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_student(teacher, task: dict, prompts: int, chains: int, max_tokens: int) -> dict:
    """A sentiment job, a LoRA distillation with the default recipe, a forced promotion; the student's registry row."""
    from services.demo import _training_progress, _watch

    job = teacher.call("POST", "/v1/jobs", json={"task": task["name"], "prompts": task["prompts"][:prompts], "chains": chains,
                                                "max_tokens": max_tokens, "seed": 0})
    job = _watch("sampling", lambda: teacher.call("GET", f"/v1/jobs/{job['id']}"),
                 lambda s: (s["progress"]["done"], s["progress"]["total"], f"({s['progress']['accepted']} accepted)"))
    run = teacher.call("POST", "/admin/distillations", json={
        "task": task["name"], "jobs": [job["id"]], "eval_prompts": task["eval_prompts"][:4], "eval_samples": 2,
        "eval_max_tokens": 32, "collapse_check": False, "seed": 0})
    run = _watch("training", lambda: teacher.call("GET", f"/admin/distillations/{run['id']}"), _training_progress, interval=3)
    teacher.call("POST", f"/admin/students/{run['student_id']}/promote", params={"force": "true"})
    return next(s for s in teacher.call("GET", "/admin/students")["data"] if s["id"] == run["student_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients")
    parser.add_argument("--answers", default="4,16,64", help="answers per side, level and round (one number per level)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--train-prompts", type=int, default=48, help="prompts of the job the student learns from")
    parser.add_argument("--chains", type=int, default=2, help="chains per prompt of that job (the chain side runs 1 and this)")
    parser.add_argument("--eager", action="store_true", help="vLLM engines without compilation (default: as `dsc up`, compiled)")
    args = parser.parse_args()
    levels = dict(zip(map(int, args.levels.split(",")), map(int, args.answers.split(","))))
    if args.eager:
        os.environ["DSC_VLLM_ENFORCE_EAGER"] = "true"

    from rich.console import Console
    from rich.table import Table

    from machine import describe_machine
    from services.demo import Client
    from services.local import LocalStack
    from services.process_memory import PeakMemory
    from services.served_cost import CostSetup, Side, measure, ratios, summaries
    from shared.settings import Settings

    console = Console(stderr=True)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dsc-bench-cost-"))
    defaults = Settings()
    settings = Settings(data_dir=work, model_store=defaults.resolved_model_store,
                        teacher={"port": free_port()}, student={"port": free_port()})
    with LocalStack(settings) as stack, PeakMemory() as memory:
        stack.wait_ready(1200)
        ready_s = time.monotonic() - began
        teacher = Client(stack.teacher_url, stack.tokens.admin_token)
        task = teacher.call("GET", "/v1/tasks/sentiment")
        student = make_student(teacher, task, args.train_prompts, args.chains, args.max_tokens)
        served = f"{student['name']}-v{student['version']}"
        deadline = time.monotonic() + 600  # the student service loads (and, merged, merges) the promoted student
        student_http = Client(stack.student_url, stack.tokens.client_key)
        while served not in {m["id"] for m in student_http.call("GET", "/v1/models")["data"]}:
            if time.monotonic() > deadline:
                raise SystemExit("the student service did not serve the promoted student in time")
            time.sleep(2)
        models = student_http.call("GET", "/v1/models")["data"]
        base = next(m["id"] for m in models if m.get("dsc_kind") == "base")
        served_as = next(m.get("served_as") for m in models if m["id"] == served)
        setup = CostSetup(stack.teacher_url, stack.student_url, stack.tokens.client_key, "sentiment", task["eval_prompts"],
                          max_tokens=args.max_tokens, sync_prompts=settings.teacher.max_sync_prompts,
                          sync_slots=settings.teacher.max_concurrent_sync)
        chain_sides = [Side("chain x1", chains=1)] + ([Side(f"chain x{args.chains}", chains=args.chains)] if args.chains > 1 else [])
        sides = [Side("student", model=served), Side("base", model=base), *chain_sides]
        measured_at = time.monotonic()
        results = measure(setup, sides, levels, args.rounds, on_step=lambda step: console.log(step))
        measure_s = time.monotonic() - measured_at

    summary = summaries(results)
    chain_names = [side.name for side in chain_sides]
    level_ratios = {clients: ratios(summary[clients], "student", "base", chain_names) for clients in summary}
    table = Table(title=f"served cost per answer: {args.max_tokens}-token limit, T 0.7, {args.rounds} round(s), "
                        f"{'eager' if args.eager else 'compiled'} engines")
    for column in ("clients", "side", "answers", "errors", "s/answer", "tok/s", "decode tok/s", "tok/answer", "latency p50 s", "latency p95 s",
                   "cost ÷ student"):
        table.add_column(column, justify="right")
    for clients, by_side in summary.items():
        for name, row in by_side.items():
            over = "" if name == "student" else (
                f"{row['s_per_answer'] / by_side['student']['s_per_answer']:.2f}" if row["s_per_answer"] and by_side["student"]["s_per_answer"] else "-")
            table.add_row(str(clients), name, str(row["answers"]), str(row["errors"]), *(
                "-" if row[key] is None else str(row[key]) for key in ("s_per_answer", "tokens_per_s", "decode_tokens_per_s", "tokens_per_answer",
                                                             "latency_p50_s", "latency_p95_s")), over)
    Console(width=160).print(table)
    errors = sum(row["errors"] for by_side in summary.values() for row in by_side.values())
    met = {
        "chain_over_student": all((r.get("chain x1/student") or 0) >= TARGETS["chain_over_student"] for r in level_ratios.values()),
        "student_over_base_tokens_per_s": all((r.get("student/base decode_tokens_per_s") or 0) >= TARGETS["student_over_base_tokens_per_s"]
                                              for r in level_ratios.values()),
        "zero_errors": errors == 0,
    }
    print(f"student served as: {served_as}; stack ready in {ready_s:.0f} s; "
          f"measuring {measure_s:.0f} s; peak memory of the stack (PSS, whole process tree) {memory.peak_gib} GiB ({memory.breakdown()}); whole run {time.monotonic() - began:.0f} s")
    print(json.dumps({
        "bench": "served_cost", "levels": levels, "rounds": args.rounds, "max_tokens": args.max_tokens, "eager": args.eager,
        "student": served, "served_as": served_as, "summary": {str(c): s for c, s in summary.items()}, "ratios": {str(c): r for c, r in level_ratios.items()},
        "errors": errors, "peak_pss_gib": memory.peak_gib, "peak_by_process_gib": {k: round(v / 2**30, 2) for k, v in memory.at_peak.items()}, "measure_s": round(measure_s, 1),
        "total_s": round(time.monotonic() - began, 1), "machine": describe_machine(), "targets": TARGETS, "met": met,
    }))


if __name__ == "__main__":
    main()
