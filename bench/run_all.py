"""`make bench`: every benchmark of the suite in turn, then their headline figures into
bench/RESULTS.md (between its `bench:suite` markers; the notes around them are kept).

Each benchmark is its own script and process (one engine at a time on the machine); this runner
only starts them, shows their output as it comes, and reads the JSON object each prints as its
last line. A benchmark that fails is reported as failed and the others still run. Each result is
kept in bench/out/suite/ as well, so `--only` reruns some benchmarks and the block shows the
latest result of every one (with when it ran).

    .venv/bin/python bench/run_all.py [--only sampler,store] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import describe_machine

HERE = Path(__file__).resolve().parent
BENCH_PYTHON = HERE.parent / ".venv-bench" / "bin" / "python"  # the venv with the peers (TRL, distilabel): make bench-venv
BEGIN, END = "<!-- bench:suite:begin -->", "<!-- bench:suite:end -->"
KEPT = HERE / "out" / "suite"  # the latest result of each benchmark (gitignored)

# name, script, arguments. Sized to fit the budget on 2 cores: vLLM engines eager (a compiled start
# costs about a minute more per engine and gained under 10% here), the sampler's answers 32 tokens.
SUITE: list[tuple[str, str, list[str]]] = [
    ("sampler", "sampler.py", ["--eager", "--max-tokens", "32"]),
    ("answer_cost", "answer_cost.py", ["--eager", "--repeats", "2"]),
    ("served_cost", "served_cost.py", ["--eager"]),
    ("student_serving", "student_serving.py", ["--eager"]),
    ("vs_distilabel", "vs_distilabel.py", []),
    ("distill_speed", "distill_speed.py", ["--repeats", "1", "--pipeline-pairs", "100,500"]),
    ("store", "store.py", []),
]
BUDGET_S = 25 * 60


def run_one(script: str, arguments: list[str]) -> tuple[dict | None, float, int]:
    """Run a benchmark, echoing its output; its last JSON line, its wall time and exit status."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(HERE / script), *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=HERE.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    last = None
    for line in process.stdout:
        sys.stdout.write(line)
        if line.startswith("{") and line.rstrip().endswith("}"):
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                pass
    code = process.wait()
    return (last if last and "bench" in last else None), time.perf_counter() - started, code


def suite_markdown(results: list[dict], machine: dict) -> str:
    total_s = sum(result["seconds"] for result in results)
    days = sorted({result["finished"][:16].replace("T", " ") for result in results})
    missing = [name for name, _, _ in SUITE if name not in {result["name"] for result in results}]
    verdict = (f"not run: {', '.join(missing)}" if missing else "within" if total_s <= BUDGET_S else "over")
    lines = [
        BEGIN,
        f"**Latest `make bench`: {days[0]} – {days[-1]} UTC, {total_s / 60:.1f} min of benchmarks in all** "
        f"(budget {BUDGET_S // 60} min for the whole suite; {verdict}).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['flags']) or 'no AVX-512/AMX'}), "
        f"{machine['memory_gib']} GiB, GPU: {machine['gpu'] or 'none'}; engine dtype {machine['engine_dtype']}; "
        + ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version) + ".",
        "",
        "| benchmark | ran (UTC) | minutes | targets met | targets missed |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        met = (result["json"] or {}).get("met") or {}
        if not isinstance(met, dict):
            met = {result["name"]: bool(met)}
        if result["json"] is None:
            hit, missed = "-", f"failed (exit {result['code']})"
        else:
            hit = ", ".join(name for name, ok in met.items() if ok) or "-"
            missed = ", ".join(name for name, ok in met.items() if not ok) or "-"
        ran = result["finished"][:16].replace("T", " ")
        lines.append(f"| {result['name']} | {ran} | {result['seconds'] / 60:.1f} | {hit} | {missed} |")
    lines += [f"| {name} | not run yet | - | - | - |" for name in missing]
    lines += ["", "The last line each printed:", "", "```"]
    lines += [json.dumps(result["json"]) for result in results if result["json"] is not None]
    lines += ["```", END]
    return "\n".join(lines)


def kept_results() -> list[dict]:
    """The latest kept result of each benchmark of the suite, in the suite's order."""
    found = [KEPT / f"{name}.json" for name, _, _ in SUITE]
    return [json.loads(path.read_text()) for path in found if path.exists()]


def write_results(block: str, path: Path = HERE / "RESULTS.md") -> None:
    text = path.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:  # first run: the suite's block goes right under the title and its introduction
        head, _, rest = text.partition("\n## ")
        text = f"{head.rstrip()}\n\n{block}\n\n## {rest}"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names (default: all); the others keep their last result")
    parser.add_argument("--no-write", action="store_true", help="print the summary, leave bench/RESULTS.md alone")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    if not BENCH_PYTHON.exists():
        print(f"warning: {BENCH_PYTHON} is missing (make bench-venv); the benchmarks against TRL and distilabel will fail", flush=True)

    machine = describe_machine()
    KEPT.mkdir(parents=True, exist_ok=True)
    for name, script, arguments in SUITE:
        if chosen is not None and name not in chosen:
            continue
        print(f"\n=== {name}: {script} {' '.join(arguments)} (load average {os.getloadavg()[0]:.2f})", flush=True)
        last, seconds, code = run_one(script, arguments)
        result = {"name": name, "json": last, "seconds": round(seconds, 1), "code": code,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (KEPT / f"{name}.json").write_text(json.dumps(result))
        print(f"=== {name}: {seconds / 60:.1f} min, exit {code}", flush=True)
    results = kept_results()
    block = suite_markdown(results, machine)
    print("\n" + block)
    if not args.no_write:
        write_results(block)
        print("bench/RESULTS.md updated")
    sys.exit(0 if all(result["json"] is not None for result in results) else 1)


if __name__ == "__main__":
    main()
