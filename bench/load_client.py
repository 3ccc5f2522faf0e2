"""Load generator of bench/student_serving.py: its own process, asyncio and `openai.AsyncOpenAI`.

For each concurrency level N: N clients, each sending streaming chat completions back to back
(one at a time) until the level's request count is used up; then the next level. Per request it
records the latency (request sent → stream ended), the time to first token (request sent → the
first chunk carrying content; the role-only chunk both servers send first does not count), the
output tokens (the usage chunk, `stream_options={"include_usage": True}`), the prompt tokens and
any error. One warm-up request before the first level is not counted.

    python bench/load_client.py --url http://127.0.0.1:8000/v1 --api-key KEY --model student \
        --levels 1,4,16,64 --requests 32 [--max-tokens 64]

Prints one JSON object: {"levels": [{"concurrency": N, "requests": R, "wall_s": ..., "rows": [...]}, ...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from shared.stats import percentile

# Short, varied prompts that invite answers longer than 64 tokens, so (nearly) every answer runs to
# max_tokens and both servers generate the same amount.
PROMPTS = [
    "Explain how a refrigerator keeps food cold, step by step.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the water cycle to a ten-year-old.",
    "What are the pros and cons of working from home? Give several of each.",
    "Give me a detailed recipe for a simple vegetable soup.",
    "Explain why the sky is blue and sunsets are red.",
    "Describe a walk through a busy market in the early morning.",
    "How does a bicycle stay upright while moving? Explain in detail.",
    "Write a letter to a friend describing your last holiday.",
    "List and explain five habits that help people sleep better.",
    "Explain how vaccines train the immune system.",
    "Describe how bread is made, from wheat field to bakery shelf.",
    "What should someone consider before adopting a dog? Explain each point.",
    "Tell the history of the printing press and why it mattered.",
    "Explain the difference between weather and climate with examples.",
    "Write a product description for a waterproof hiking backpack.",
]


async def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    row: dict = {"ok": False, "latency_s": None, "ttft_s": None, "output_tokens": 0, "prompt_tokens": None, "error": None,
                "model": None}
    started = time.perf_counter()
    chunks = 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        async for chunk in stream:
            row["model"] = chunk.model
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                if row["ttft_s"] is None:
                    row["ttft_s"] = time.perf_counter() - started
            if chunk.usage is not None:
                row["output_tokens"] = chunk.usage.completion_tokens
                row["prompt_tokens"] = chunk.usage.prompt_tokens
        row["latency_s"] = time.perf_counter() - started
        if row["prompt_tokens"] is None:
            row["error"] = "no usage chunk"
            row["output_tokens"] = chunks
        elif row["ttft_s"] is None:
            row["error"] = "no content"
        else:
            row["ok"] = True
    except Exception as exc:  # an error is a result here, counted per level
        row["latency_s"] = time.perf_counter() - started
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


async def run_level(client, model: str, concurrency: int, requests: int, max_tokens: int, offset: int) -> dict:
    counter = iter(range(requests))
    rows: list[dict] = []

    async def worker() -> None:
        for index in counter:  # shared: each client takes the next request number until none is left
            rows.append(await one_request(client, model, PROMPTS[(offset + index) % len(PROMPTS)], max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"concurrency": concurrency, "requests": requests, "wall_s": time.perf_counter() - started, "rows": rows}


async def main_async(args) -> dict:
    import httpx
    import openai

    levels = [int(level) for level in args.levels.split(",")]
    limits = httpx.Limits(max_connections=max(levels) + 8, max_keepalive_connections=max(levels) + 8)
    http = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.timeout))
    async with openai.AsyncOpenAI(base_url=args.url, api_key=args.api_key, max_retries=0, http_client=http) as client:
        warm = await one_request(client, args.model, PROMPTS[0], args.max_tokens)
        if not warm["ok"]:
            raise SystemExit(f"warm-up request failed: {warm['error']}")
        results = []
        for number, concurrency in enumerate(levels):
            requests = max(args.requests, concurrency)  # at least one request per client
            results.append(await run_level(client, args.model, concurrency, requests, args.max_tokens, offset=number * 5))
    return {"warmup": warm, "levels": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the OpenAI base URL, ending in /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients per level, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at least one per client)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
