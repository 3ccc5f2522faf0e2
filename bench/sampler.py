"""Batched critique→revise sampler vs the reference's sequential loop, same engine, one run.

The paper's reference loop (docs/architecture.md §1.4) takes one prompt at a time through three calls (answer, critique,
revision) and scores afterwards. dSC's sampler batches every chain of a call into one engine call
per phase. Both run here on the same engine and model, side by side; the ratio is the figure.

    .venv/bin/python bench/sampler.py [--engine vllm|transformers] [--prompts 32] [--max-tokens 64] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sequential_reference(engine, reward, task, prompts, params):
    """One prompt at a time: answer, critique, revision (three calls), then the reward."""
    from shared.engines.base import SamplingParams

    tokens = 0
    for index, prompt in enumerate(prompts):
        one = SamplingParams(params.temperature, params.top_p, params.max_tokens, None if params.seed is None else params.seed + index)
        turns = [{"role": "user", "content": prompt}]
        answer = engine.generate([turns], one)[0]
        turns += [{"role": "assistant", "content": answer.text}, {"role": "user", "content": task.critique_request}]
        critique = engine.generate([turns], one)[0]
        turns += [{"role": "assistant", "content": critique.text}, {"role": "user", "content": task.revision_request}]
        revision = engine.generate([turns], one)[0]
        before, after = reward.score([prompt, prompt], [answer.text, revision.text])
        _ = revision.text if after > before else answer.text  # accept-if-improved
        tokens += answer.completion_tokens + critique.completion_tokens + revision.completion_tokens
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (faster start, slower run)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from shared.engines import create_engine
    from shared.engines.base import SamplingParams
    from shared.rewards import build_reward
    from shared.critique_revise import Sampler
    from shared.settings import BUNDLED_MODEL, Settings
    from shared.tasks import preset_tasks

    settings = Settings(engine=args.engine, vllm={"enforce_eager": args.eager})
    task = preset_tasks()["sentiment"]
    prompts = task.prompts[: args.prompts]
    reward = build_reward(task.reward)
    engine = create_engine(settings, BUNDLED_MODEL)
    params = SamplingParams(temperature=0.7, max_tokens=args.max_tokens, seed=0)

    # Warm-up so neither side pays first-call costs (allocations, prefix cache creation).
    engine.generate([[{"role": "user", "content": prompts[0]}]] * 4, params)

    start = time.perf_counter()
    chains = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request).run(
        prompts, steps=1, chains=1, acceptance="improve", params=params
    )
    batched_s = time.perf_counter() - start
    batched_tokens = sum(chain.tokens for chain in chains)

    start = time.perf_counter()
    sequential_tokens = sequential_reference(engine, reward, task, prompts, params)
    sequential_s = time.perf_counter() - start

    ratio = sequential_s / batched_s
    table = Table(title=f"sampler: {len(prompts)} prompts, 1 step, {args.max_tokens} max new tokens, engine {engine.name}")
    for column in ("variant", "seconds", "tokens generated", "tokens/s"):
        table.add_column(column, justify="right")
    table.add_row("sequential (reference loop)", f"{sequential_s:.1f}", str(sequential_tokens), f"{sequential_tokens / sequential_s:.0f}")
    table.add_row("batched (dSC sampler)", f"{batched_s:.1f}", str(batched_tokens), f"{batched_tokens / batched_s:.0f}")
    Console().print(table)
    print(f"batched is {ratio:.1f}x faster than sequential (time ratio); machine: {platform.machine()}, {os.cpu_count()} cores")
    target = 5.0
    print(json.dumps({"bench": "sampler", "engine": engine.name, "prompts": len(prompts), "max_tokens": args.max_tokens,
                      "sequential_s": round(sequential_s, 2), "batched_s": round(batched_s, 2),
                      "batched_over_sequential": round(ratio, 2), "target": target, "met": ratio >= target}))
    engine.close()


if __name__ == "__main__":
    main()
