"""The dSC student service against vLLM's own server (`vllm serve`): same base model, same LoRA
adapter, same engine arguments, the same load, each serving the student the fastest way it can
(`--served-as`, default as the student service decides: on vLLM-CPU, whose LoRA path runs at a
third of the base model's speed, merged weights on both servers, no LoRA; elsewhere the adapter).

Both servers run the bundled SmolLM2-135M-Instruct with one LoRA adapter of the trainer's default
shape (rank 16, alpha 32, q/k/v/o projections), made here with peft. peft's default init sets B = 0,
so the adapter answers exactly like the base model: both servers generate the same tokens, and the
comparison is the serving layer's alone. The dSC side is a real `dsc student serve` process on the
vLLM engine, serving the adapter as the active student of a fresh SQLite registry (registered and
promoted through the registry's own code); the vLLM side is `vllm serve` with the engine arguments
dSC's own engine_options produce (dtype, context, KV cache bytes, LoRA slots and rank, chunked
prefill off, batched tokens, eager or compiled, prefix caching, seed, OpenMP thread binding) and
`--lora-modules student=<adapter>`. Both are asked for `model: "student"`.

The load comes from bench/load_client.py in its own process: at each level (1, 4, 16, 64
concurrent clients) every client sends streaming chat completions back to back (64 new tokens,
temperature 0) until the level's request count is used up. Both servers are up for the whole run
but take the load one at a time (two cores): with `--rounds N` each runs every level N times, the
two taking turns and the order flipping each round; a level's figures pool its rounds' requests.

Eager by default (--no-eager compiles): a compiled vLLM-CPU engine takes ~90 s to start on an
idle 2-core machine (~19 s eager; bench/RESULTS.md), and two of them would spend half of the run's
six minutes starting. `vllm serve` itself is run as
`python -m vllm.entrypoints.openai.api_server`, the same server: the `vllm` script fails at start-up
here, asking for the version of a distribution named "vllm" where this one is "vllm-cpu".

Targets: at 16 clients the student reaches >= 90% of vLLM's requests/s with a p95 time to first
token within 1.2x of vLLM's, and no request fails at any level.

    .venv/bin/python bench/student_serving.py [--levels 1,4,16,64] [--requests-per-level 8]
        [--max-tokens 64] [--eager] [--order dsc,vllm] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
KEY = "bench-serving-key"
SERVED_NAME = "student"  # the dSC alias of the newest promoted student, and vLLM's --lora-modules name
TARGETS = {"throughput_16": 0.9, "ttft_p95_16": 1.2, "zero_errors": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter of the trainer's default shape, fresh from peft (B = 0: answers as the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from shared.distillation.config import DistillationConfig

    config = DistillationConfig.model_fields
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=config["lora_r"].default, lora_alpha=config["lora_alpha"].default,
                      lora_dropout=config["lora_dropout"].default, target_modules=list(config["lora_target_modules"].get_default(call_default_factory=True)),
                      task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    return out


def register_active(database_url: str, base: Path, adapter: Path) -> str:
    """The adapter as the active student of a fresh registry, through the registry's own promote."""
    from shared.db.models import Student
    from shared.db.session import make_engine, session_factory, transaction, upgrade
    from shared.distillation.registry import promote

    upgrade(database_url)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        student = Student(name="bench-student", version=1, task_name="sentiment", base_model=str(base), metrics={},
                          adapter_path=str(adapter))
        session.add(student)
        session.flush()
        student_id = student.id
    promote(sessions, student_id, force=True)
    engine.dispose()
    return student_id


def vllm_flags(options: dict) -> list[str]:
    """dSC's AsyncEngineArgs (engine_options) as `vllm serve` flags."""
    flags = []
    for name, value in options.items():
        if name == "model":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


class Server:
    """One server process in a session of its own (its engine core and workers with it)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], ready_path: str, log_path: Path, port: int) -> None:
        self.name, self.command, self.env, self.ready_path, self.log_path = name, command, env, ready_path, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.start_s: float | None = None

    def start(self, timeout: float) -> None:
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        headers = {"Authorization": f"Bearer {KEY}"}
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited before it was ready:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                ready = httpx.get(self.url + self.ready_path, timeout=2).status_code == 200
                if ready:
                    models = httpx.get(f"{self.url}/v1/models", headers=headers, timeout=5).json()
                    names = {card["id"] for card in models["data"]} | {a for card in models["data"] for a in card.get("aliases", [])}
                    if SERVED_NAME in names:
                        self.start_s = time.monotonic() - started
                        return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None and not _group_alive(process.pid):
            return
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (process.poll() is None or _group_alive(process.pid)):
                time.sleep(0.2)
            if process.poll() is not None and not _group_alive(process.pid):
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def drive(server: Server, args) -> dict:
    """Run the load client against `server`; its JSON result."""
    command = [sys.executable, str(HERE / "load_client.py"), "--url", f"{server.url}/v1", "--api-key", KEY, "--model", SERVED_NAME,
               "--levels", args.levels, "--requests", str(args.requests_per_level), "--max-tokens", str(args.max_tokens)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"load client against {server.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pooled(levels: tuple[dict, ...]) -> dict:
    """One level's runs over all rounds as one: every request's row, and the rounds' wall time added."""
    return {"concurrency": levels[0]["concurrency"], "rows": [row for level in levels for row in level["rows"]],
            "wall_s": sum(level["wall_s"] for level in levels)}


def summarise(level: dict) -> dict:
    from shared.stats import percentile

    rows = level["rows"]
    ok = [row for row in rows if row["ok"]]
    tokens = sum(row["output_tokens"] for row in ok)
    wall = level["wall_s"]

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(1000 * value, 1)

    latencies, ttfts = [row["latency_s"] for row in ok], [row["ttft_s"] for row in ok]
    errors = [row["error"] for row in rows if not row["ok"]]
    return {
        "concurrency": level["concurrency"], "requests": len(rows), "ok": len(ok), "errors": len(errors),
        "first_error": errors[0] if errors else None, "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
        "output_tokens_per_request": round(tokens / max(len(ok), 1), 1),
        "prompt_tokens_per_request": round(sum(row["prompt_tokens"] for row in ok) / max(len(ok), 1), 1),
        "latency_p50_ms": ms(latencies, 0.5), "latency_p95_ms": ms(latencies, 0.95),
        "ttft_p50_ms": ms(ttfts, 0.5), "ttft_p95_ms": ms(ttfts, 0.95),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients per level (16 must be among them for the targets)")
    parser.add_argument("--requests-per-level", type=int, default=8,
                        help="requests per level, at least one per client (so 16 at 16 clients, 64 at 64)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="vLLM without compilation on both servers (default: eager; --no-eager compiles)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every level on each server, taking turns; pooled")
    parser.add_argument("--order", default="dsc,vllm", choices=["dsc,vllm", "vllm,dsc"], help="which server runs first")
    parser.add_argument("--served-as", default="auto", choices=["auto", "adapter", "merged"],
                        help="how both servers run the student: the adapter over the base model, or merged weights; "
                        "auto: as the student service would (DSC_STUDENT_SERVE_STUDENTS_AS: merged on vLLM-CPU)")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work directory (logs, registry, adapter) here")
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C from make) unwinds through the finally blocks that stop both servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    load_before = os.getloadavg()[0]

    # The settings both servers share, from the environment as the services read them.
    os.environ["DSC_ENGINE"] = "vllm"
    os.environ["DSC_VLLM_ENFORCE_EAGER"] = "true" if args.eager else "false"
    from rich.console import Console
    from rich.table import Table

    from services.student.runtimes.vllm_runtime import _supported_rank, serves_merged
    from shared.engines.vllm_options import engine_options, engine_settings
    from shared.model_store import merge_adapter, resolve_model
    from shared.settings import BUNDLED_MODEL, Settings

    os.environ["DSC_STUDENT_SERVE_STUDENTS_AS"] = args.served_as
    settings = Settings()
    merged = serves_merged(settings)
    base = resolve_model(BUNDLED_MODEL, settings.resolved_model_store)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dsc-bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    adapter = make_adapter(base, work / "adapter")
    database_url = f"sqlite:///{work / 'registry.db'}"
    register_active(database_url, base, adapter)

    # Exactly the student's engine arguments (VLLMRuntime.from_settings: no LoRA where students run
    # merged); engine_options also sets the OpenMP thread binding in this process's environment,
    # which both servers inherit.
    model = merge_adapter(base, adapter, work / "merged") if merged else base
    options = engine_options(str(model), **engine_settings(settings), max_loras=0 if merged else settings.student.max_loras,
                             max_lora_rank=_supported_rank(settings.student.max_lora_rank))
    options["structured_outputs_config"] = {"backend": "guidance", "disable_any_whitespace": True}  # as VLLMRuntime
    common_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # The dSC side merges the student itself, into a model store of this run's own.
    dsc_env = {**common_env, "DSC_DATABASE_URL": database_url, "DSC_DATA_DIR": str(work / "data"),
               "DSC_MODEL_STORE": str(work / "store"), "DSC_STUDENT_BASE_MODEL": str(base), "DSC_API_KEYS": KEY}
    dsc_port, vllm_port = free_port(), free_port()
    # vLLM's OpenAI server, as `vllm serve` runs it (the `vllm` script fails here: see the docstring):
    # the merged weights as its model, or the base model with the adapter as a LoRA module.
    served = ["--served-model-name", SERVED_NAME] if merged else ["--served-model-name", BUNDLED_MODEL, "--lora-modules", f"{SERVED_NAME}={adapter}"]
    vllm_command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
                    "--port", str(vllm_port), "--api-key", KEY, *served, *vllm_flags(options)]
    servers = {
        "dsc": Server("dSC student", [sys.executable, "-m", "services.cli", "student", "serve", "--port", str(dsc_port)],
                      dsc_env, "/readyz", work / "dsc-student.log", dsc_port),
        "vllm": Server("vllm serve", vllm_command, common_env, "/health", work / "vllm-serve.log", vllm_port),
    }
    order = args.order.split(",")
    results: dict[str, list[dict]] = {name: [] for name in order}
    try:
        # Both servers stay up (an idle one takes no CPU to speak of) and take the load in turns,
        # the order flipping each round, so a slow spell of the shared machine falls on both.
        for name in order:
            servers[name].start(args.start_timeout)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                results[name].append(drive(servers[name], args))
    finally:
        for server in servers.values():
            server.stop()

    summary = {name: [summarise(pooled(levels)) for levels in zip(*(run["levels"] for run in results[name]))] for name in order}
    served_by = {name: results[name][0]["warmup"].get("model") for name in order}
    table = Table(title=f"student serving ({'merged' if merged else 'adapter'}): {args.max_tokens} new tokens, {args.requests_per_level} requests a level, "
                        f"{args.rounds} round(s), {'eager' if args.eager else 'compiled'}, order {' then '.join(order)}")
    for column in ("server", "clients", "ok/req", "req/s", "out tok/s", "latency p50 ms", "latency p95 ms", "TTFT p50 ms", "TTFT p95 ms",
                   "dSC/vLLM req/s", "dSC/vLLM TTFT p95"):
        table.add_column(column, justify="right")
    by_level = {name: {row["concurrency"]: row for row in summary[name]} for name in order}
    ratios = {}
    for concurrency in by_level["vllm"]:
        d, v = by_level["dsc"][concurrency], by_level["vllm"][concurrency]
        ratios[concurrency] = {"throughput": ratio(d["requests_per_s"], v["requests_per_s"]),
                               "output_tokens_per_s": ratio(d["output_tokens_per_s"], v["output_tokens_per_s"]),
                               "ttft_p95": ratio(d["ttft_p95_ms"], v["ttft_p95_ms"]),
                               "latency_p95": ratio(d["latency_p95_ms"], v["latency_p95_ms"])}
        for name, row in (("vllm serve", v), ("dSC student", d)):
            extra = tuple("-" if ratios[concurrency][k] is None else f"{ratios[concurrency][k]:.2f}" for k in ("throughput", "ttft_p95")) \
                if name == "dSC student" else ("", "")
            table.add_row(name, str(concurrency), f"{row['ok']}/{row['requests']}", f"{row['requests_per_s']:.2f}",
                          f"{row['output_tokens_per_s']:.0f}", *(f"{row[k]:.0f}" if row[k] is not None else "-" for k in
                          ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")), *extra)
    Console(width=150).print(table)
    at16 = ratios.get(16, {})
    errors = sum(row["errors"] for name in order for row in summary[name])
    met = {"throughput_16": at16.get("throughput") is not None and at16["throughput"] >= TARGETS["throughput_16"],
           "ttft_p95_16": at16.get("ttft_p95") is not None and at16["ttft_p95"] <= TARGETS["ttft_p95_16"],
           "zero_errors": errors == 0}
    total_s = time.monotonic() - began
    print(f"order: {' then '.join(order)}; engine start to ready: " +
          ", ".join(f"{servers[n].name} {servers[n].start_s:.0f} s" for n in order) +
          f"; answered as: {served_by}; errors: {errors}; whole run {total_s:.0f} s; machine: {platform.machine()}, {os.cpu_count()} cores")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "bench": "student_serving", "served_as": "merged" if merged else "adapter", "order": order, "eager": args.eager, "max_tokens": args.max_tokens,
        "requests_per_level": args.requests_per_level, "rounds": args.rounds, "levels": [int(c) for c in args.levels.split(",")],
        "start_s": {n: round(servers[n].start_s, 1) for n in order}, "served_by": served_by,
        "dsc": summary["dsc"], "vllm": summary["vllm"], "ratios": {str(c): r for c, r in ratios.items()},
        "errors": errors, "total_s": round(total_s, 1), "cores": os.cpu_count(), "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2), "targets": TARGETS, "met": met,
    }))


if __name__ == "__main__":
    main()
