"""What an answer costs a client of the running services: the promoted student, the base model on
the student service and the teacher's critique→revise chain, for the same prompts and limits,
over HTTP, side by side in one run. `dsc demo` prints a short run; bench/served_cost.py the full one.

Load at a level of N clients:
- student and base: N clients, each sending chat completions back to back (closed loop) until the
  level's requests are used up;
- the chain: the teacher's best use of N prompts at once, not N one-prompt calls (those beyond its
  synchronous slots would wait out a 429): calls of up to `sync_prompts` prompts each (the
  teacher's max_sync_prompts), as many in flight as N needs and its slots allow (max_concurrent_sync).
A side's cost per answer is its wall time over its answers (at one client, the mean latency);
rounds alternate the order of the sides, so a slow spell of the machine falls on all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from shared.stats import percentile


@dataclass(frozen=True)
class Side:
    """One way of getting an answer: a student-service model, or the teacher's chain."""

    name: str
    model: str | None = None  # student service: the model to ask for
    chains: int = 0  # teacher: chains per prompt (0: not a chain)

    @property
    def is_chain(self) -> bool:
        return self.chains > 0


@dataclass
class Tally:
    """Every answer of one side at one level, over all rounds."""

    latencies: list[float] = field(default_factory=list)  # per answer: request sent → its answer back
    decode_rates: list[float] = field(default_factory=list)  # per answer: tokens after the first over the time after it
    tokens: int = 0  # completion tokens (student service only; the chain's answers are not counted in tokens)
    answers: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "answers": self.answers, "errors": len(self.errors), "first_error": self.errors[0] if self.errors else None,
            "s_per_answer": round(self.wall_s / self.answers, 3) if self.answers else None,
            "tokens_per_s": round(self.tokens / self.wall_s, 1) if self.tokens and self.wall_s else None,
            "tokens_per_answer": round(self.tokens / self.answers, 1) if self.tokens and self.answers else None,
            "decode_tokens_per_s": _rounded(percentile(self.decode_rates, 0.5)),
            "latency_p50_s": _rounded(percentile(self.latencies, 0.5)), "latency_p95_s": _rounded(percentile(self.latencies, 0.95)),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class CostSetup:
    teacher_url: str
    student_url: str
    client_key: str
    task: str
    prompts: list[str]
    max_tokens: int = 96
    temperature: float = 0.7
    sync_prompts: int = 16  # the teacher's max_sync_prompts
    sync_slots: int = 2  # the teacher's max_concurrent_sync


async def _student_level(http: httpx.AsyncClient, setup: CostSetup, side: Side, clients: int, prompts: list[str], tally: Tally) -> None:
    queue = iter(prompts)

    async def client() -> None:
        for prompt in queue:  # shared: each client takes the next prompt until none is left
            try:
                latency, first_token, tokens = await _stream_answer(http, setup, side.model, prompt)
            except Exception as exc:  # an error is a result here, counted per side
                tally.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            tally.tokens += tokens
            tally.latencies.append(latency)
            tally.answers += 1
            if tokens > 1 and latency > first_token:
                tally.decode_rates.append((tokens - 1) / (latency - first_token))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    tally.wall_s += time.perf_counter() - started


async def _stream_answer(http: httpx.AsyncClient, setup: CostSetup, model: str | None, prompt: str) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": setup.max_tokens,
            "temperature": setup.temperature, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first_token, tokens = None, None
    async with http.stream("POST", f"{setup.student_url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if first_token is None and any(choice.get("delta", {}).get("content") for choice in chunk.get("choices") or ()):
                first_token = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without its usage chunk")
    latency = time.perf_counter() - started
    return latency, first_token if first_token is not None else latency, tokens


async def _chain_level(http: httpx.AsyncClient, setup: CostSetup, side: Side, clients: int, prompts: list[str], tally: Tally) -> None:
    per_call = min(clients, setup.sync_prompts)
    calls = [prompts[i:i + per_call] for i in range(0, len(prompts), per_call)]
    queue = iter(calls)

    async def caller() -> None:
        for part in queue:
            body = {"task": setup.task, "prompts": part, "steps": 1, "chains": side.chains, "max_tokens": setup.max_tokens,
                    "temperature": setup.temperature, "store": False}
            started = time.perf_counter()
            try:
                response = await http.post(f"{setup.teacher_url}/v1/critique-revise", json=body)
                response.raise_for_status()
                answered = {row["prompt_index"] for row in response.json()["results"]}
                tally.latencies += [time.perf_counter() - started] * len(answered)
                tally.answers += len(answered)
            except Exception as exc:
                tally.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(math.ceil(clients / per_call), setup.sync_slots))))
    tally.wall_s += time.perf_counter() - started


async def measure_async(setup: CostSetup, sides: list[Side], levels: dict[int, int], rounds: int,
                        on_step: Callable[[str], None] | None = None) -> dict[int, dict[str, Tally]]:
    """{clients: {side: Tally}}. `levels`: clients → answers per side and round (at least one per client)."""
    results = {clients: {side.name: Tally() for side in sides} for clients in levels}
    timeout = httpx.Timeout(900.0, connect=30.0)
    limits = httpx.Limits(max_connections=max(levels) + 8, max_keepalive_connections=max(levels) + 8)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {setup.client_key}"}, timeout=timeout, limits=limits) as http:
        for side in sides:  # warm-up, not counted: first-request costs (compilation, caches) on no side
            await (_chain_level if side.is_chain else _student_level)(http, setup, side, 1, setup.prompts[:1], Tally())
        for round_ in range(rounds):
            for clients, answers in levels.items():
                prompts = [setup.prompts[i % len(setup.prompts)] for i in range(max(answers, clients))]
                for side in (sides if round_ % 2 == 0 else sides[::-1]):
                    if on_step:
                        on_step(f"round {round_ + 1}/{rounds}, {clients} client(s): {side.name}")
                    run = _chain_level if side.is_chain else _student_level
                    await run(http, setup, side, clients, prompts, results[clients][side.name])
    return results


def measure(setup: CostSetup, sides: list[Side], levels: dict[int, int], rounds: int = 1,
            on_step: Callable[[str], None] | None = None) -> dict[int, dict[str, Tally]]:
    return asyncio.run(measure_async(setup, sides, levels, rounds, on_step))


def summaries(results: dict[int, dict[str, Tally]]) -> dict[int, dict[str, dict[str, Any]]]:
    """measure()'s tallies as {clients: {side: Tally.summary()}}."""
    return {clients: {name: tally.summary() for name, tally in by_side.items()} for clients, by_side in results.items()}


def ratios(summary: dict[str, dict], student: str, base: str, chains: list[str]) -> dict[str, float | None]:
    """Each chain's cost per answer over the student's, and the student's speed over the base's: its
    generation (decode tokens/s per answer, median) and its output tokens/s over the wall time (which
    also counts each request's fixed costs, so shorter answers score lower)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 2)

    out = {f"{chain}/student": ratio(summary[chain]["s_per_answer"], summary[student]["s_per_answer"]) for chain in chains}
    out["student/base decode_tokens_per_s"] = ratio(summary[student]["decode_tokens_per_s"], summary[base]["decode_tokens_per_s"])
    out["student/base tokens_per_s"] = ratio(summary[student]["tokens_per_s"], summary[base]["tokens_per_s"])
    return out

