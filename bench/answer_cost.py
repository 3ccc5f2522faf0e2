"""Cost of an answer on the bare engine (no service, no HTTP, no adapter): the student's procedure
(one generation) against the teacher's chain (answer, critique, revision, reward), for the same
prompts on the same engine and machine, in one run. What a client of the running services pays is
bench/served_cost.py's figure; this one isolates the procedure.

The point of distillation is that the student answers like the chain at the price of one
generation. Here both sides run the bundled model on one engine, so the figure is the cost of the
procedure alone; a teacher model larger than its student (the usual deployment) widens it by the
ratio of their per-token costs.

    .venv/bin/python bench/answer_cost.py [--engine vllm|transformers] [--prompts 32] [--max-tokens 64] [--steps 1] [--repeats 3] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = 3.0  # the student at least this many times cheaper per answer (wall time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="critique→revise steps of the teacher's chain")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the median counts")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (faster start, slower run)")
    args = parser.parse_args()
    os.environ["DSC_ENGINE"] = args.engine  # settings from the environment, as the services read them
    if args.eager:
        os.environ["DSC_VLLM_ENFORCE_EAGER"] = "true"

    from rich.console import Console
    from rich.table import Table

    from shared.critique_revise import Sampler
    from shared.engines import create_engine
    from shared.engines.base import SamplingParams
    from shared.rewards import build_reward
    from shared.settings import BUNDLED_MODEL, Settings
    from shared.tasks import preset_tasks

    task = preset_tasks()["sentiment"]
    prompts = (task.prompts * (args.prompts // len(task.prompts) + 1))[: args.prompts]
    reward = build_reward(task.reward)
    engine = create_engine(Settings(), BUNDLED_MODEL)
    params = SamplingParams(temperature=0.7, max_tokens=args.max_tokens, seed=0)
    engine.generate([[{"role": "user", "content": prompts[0]}]] * 4, params)  # warm-up: first-call costs on neither side

    sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request)

    def student() -> int:
        return sum(a.completion_tokens for a in engine.generate([[{"role": "user", "content": p}] for p in prompts], params))

    def teacher() -> int:
        chains = sampler.run(prompts, steps=args.steps, chains=1, acceptance="improve", params=params)
        return sum(chain.tokens for chain in chains)

    # Alternate the two, several times, and take each one's median: load from elsewhere on a shared
    # machine then falls on both sides rather than on whichever ran while it lasted.
    runs: dict[str, list[tuple[float, int]]] = {"student": [], "teacher": []}
    for _ in range(args.repeats):
        for name, call in (("student", student), ("teacher", teacher)):
            if hasattr(engine, "reset_prefix_cache"):  # vLLM: no side reuses the KV cache of the other's prompts
                engine.reset_prefix_cache()
            start = time.perf_counter()
            tokens = call()
            runs[name].append((time.perf_counter() - start, tokens))
    (student_s, student_tokens), (teacher_s, teacher_tokens) = (statistics.median_low(runs[name]) for name in ("student", "teacher"))
    engine.close()

    n = len(prompts)
    ratio = teacher_s / student_s
    table = Table(title=f"cost of an answer: {n} prompts, {args.max_tokens} max new tokens, {args.steps} step(s), {engine.name}")
    for column in ("path", "seconds", "ms/answer", "tokens/answer", "calls/answer"):
        table.add_column(column, justify="right")
    table.add_row("student: one generation", f"{student_s:.1f}", f"{1000 * student_s / n:.0f}", f"{student_tokens / n:.0f}", "1")
    table.add_row("teacher: chain + reward", f"{teacher_s:.1f}", f"{1000 * teacher_s / n:.0f}",
                  f"{teacher_tokens / n:.0f}", str(1 + 2 * args.steps))
    Console().print(table)
    print(f"the student is {ratio:.1f}x cheaper per answer (wall time), {teacher_tokens / max(student_tokens, 1):.1f}x in "
          f"generated tokens; machine: {platform.machine()}, {os.cpu_count()} cores")
    print(json.dumps({"bench": "answer_cost", "engine": engine.name, "prompts": n, "max_tokens": args.max_tokens, "steps": args.steps,
                      "repeats": args.repeats, "student_s": round(student_s, 2), "teacher_s": round(teacher_s, 2),
                      "student_tokens_per_answer": round(student_tokens / n, 1), "teacher_tokens_per_answer": round(teacher_tokens / n, 1),
                      "teacher_over_student": round(ratio, 2), "target": TARGET, "met": {"student_3x_cheaper": ratio >= TARGET}}))


if __name__ == "__main__":
    main()
