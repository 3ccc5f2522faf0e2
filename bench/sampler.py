"""The dSC sampler against the bare engine it runs on, same prompts, same machine, one run.

What a user would pick instead of dSC's sampler is the engine alone. So each configuration
(prompts × steps) runs:

- **sampler**: a whole critique→revise run through `Sampler.run` (answers, critiques,
  revisions, reward scoring and acceptance), on vLLM where chains advance on their own;
- **phases**: the same sampler held to one engine call per phase (every chain waits for the
  slowest sequence of the phase: the schedule before chains advanced on their own);
- **engine**: the bare engine given every conversation the sampler generated from (answers,
  critiques, revisions), all in one call, with the same token limit: the ceiling.

The figure is generated tokens per second, sampler over engine (target ≥ 0.95). Variants of a
configuration alternate over `--repeats` rounds and each one's median counts, so load from
elsewhere on a shared machine falls on all of them. The engine side has no dependencies between
its requests and no reward to compute, so the ratio is what the chain structure and the
scoring cost.

    .venv/bin/python bench/sampler.py [--prompts 32,128] [--steps 1,2] [--max-tokens 64] [--repeats 1] [--phases-at 32] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = 0.95  # sampler tokens/s over the bare engine's


def chain_conversations(sampler, chains) -> list:
    """Every conversation the sampler sent to the engine for `chains`, rebuilt from the chains."""
    conversations = []
    for chain in chains:
        conversations.append(sampler.answer_conversation(chain.prompt))
        current = chain.initial_text
        for step in chain.steps:
            turns = sampler.critique_conversation(chain.prompt, current)
            conversations += [turns, sampler.revision_conversation(turns, step.critique)]
            current = step.revision if step.accepted else current
    return conversations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="32,128", help="comma-separated prompt counts")
    parser.add_argument("--steps", default="1,2", help="comma-separated critique→revise step counts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of the three variants; medians count")
    parser.add_argument("--phases-at", default="32", help="prompt counts at which the phase-batched variant runs too (empty: none)")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (faster start, slower run)")
    args = parser.parse_args()
    os.environ["DSC_ENGINE"] = "vllm"
    if args.eager:
        os.environ["DSC_VLLM_ENFORCE_EAGER"] = "true"

    from rich.console import Console
    from rich.table import Table

    from machine import describe_machine, engine_compute_share
    from shared.critique_revise import Sampler
    from shared.engines import create_engine
    from shared.engines.base import SamplingParams
    from shared.rewards import build_reward
    from shared.settings import BUNDLED_MODEL, Settings
    from shared.tasks import preset_tasks

    settings = Settings()
    task = preset_tasks()["sentiment"]
    reward = build_reward(task.reward)
    started = time.perf_counter()
    engine = create_engine(settings, BUNDLED_MODEL)
    engine_start_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.7, max_tokens=args.max_tokens, seed=0)
    sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request, schedule="chains")
    phased = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request, schedule="phases")
    engine.generate([[{"role": "user", "content": task.prompts[0]}]] * 8, params)  # warm-up: first-call costs on no side
    reward.score([task.prompts[0]], ["warm-up"])

    rows = []
    for prompts_n in (int(n) for n in args.prompts.split(",")):
        prompts = (task.prompts * (prompts_n // len(task.prompts) + 1))[:prompts_n]
        for steps in (int(n) for n in args.steps.split(",")):
            runs: dict[str, list[tuple[float, int]]] = {"sampler": [], "phases": [], "engine": []}
            for round_ in range(args.repeats):
                variant_params = SamplingParams(temperature=0.7, max_tokens=args.max_tokens, seed=round_)
                engine.reset_prefix_cache()  # each variant prefills its own conversations: no KV cache of another's
                t0 = time.perf_counter()
                chains = sampler.run(prompts, steps=steps, acceptance="improve", params=variant_params)
                runs["sampler"].append((time.perf_counter() - t0, sum(chain.tokens for chain in chains)))
                if str(prompts_n) in args.phases_at.split(","):
                    engine.reset_prefix_cache()
                    t0 = time.perf_counter()
                    phase_chains = phased.run(prompts, steps=steps, acceptance="improve", params=variant_params)
                    runs["phases"].append((time.perf_counter() - t0, sum(chain.tokens for chain in phase_chains)))
                conversations = chain_conversations(sampler, chains)
                engine.reset_prefix_cache()
                t0 = time.perf_counter()
                generations = engine.generate(conversations, variant_params)
                runs["engine"].append((time.perf_counter() - t0, sum(g.completion_tokens for g in generations)))
            row = {"prompts": prompts_n, "steps": steps, "rounds": {name: [round(t, 2) for t, _ in m] for name, m in runs.items() if m}}
            for name, measured in runs.items():
                if measured:
                    seconds, tokens = statistics.median_low(measured)
                    row[name] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
            row["sampler_over_engine"] = round(row["sampler"]["tokens_per_s"] / row["engine"]["tokens_per_s"], 3)
            if "phases" in row:
                row["phases_over_engine"] = round(row["phases"]["tokens_per_s"] / row["engine"]["tokens_per_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    engine.close()

    machine = describe_machine()
    best = max(row["engine"]["tokens_per_s"] for row in rows)
    compute = engine_compute_share(engine.model, best, dtype=machine["engine_dtype"])  # engine.model: the resolved path
    table = Table(title=f"sampler vs bare engine: vLLM, {args.max_tokens} max new tokens, medians of {args.repeats}")
    for column in ("prompts", "steps", "sampler tok/s", "phases tok/s", "engine tok/s", "sampler/engine", "phases/engine"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["prompts"]), str(row["steps"]), f"{row['sampler']['tokens_per_s']:.0f}",
                      f"{row['phases']['tokens_per_s']:.0f}" if "phases" in row else "-", f"{row['engine']['tokens_per_s']:.0f}",
                      f"{row['sampler_over_engine']:.2f}", f"{row['phases_over_engine']:.2f}" if "phases" in row else "-")
    Console().print(table)
    print(f"engine start {engine_start_s:.0f} s; the best engine rate, {best:.0f} tokens/s, is {100 * compute['share']:.1f}% of "
          f"the measured {compute['dtype']} matmul peak ({compute['peak_gflops']:.0f} GFLOP/s, {compute['gflop_per_token']:.2f} "
          f"GFLOP/token); machine: {machine['cpu']}, {machine['cores']} cores")
    met = {f"sampler_{row['prompts']}p_{row['steps']}s_ge_{TARGET}": row["sampler_over_engine"] >= TARGET for row in rows}
    print(json.dumps({"bench": "sampler", "engine": "vllm", "max_tokens": args.max_tokens, "repeats": args.repeats,
                      "engine_start_s": round(engine_start_s, 1), "rows": rows, "compute": compute, "machine": machine,
                      "targets": {"sampler_over_engine": TARGET}, "met": met}))


if __name__ == "__main__":
    main()
