"""Distillation speed: the trainer against TRL's SFTTrainer, and the time from stored pairs to a promoted student.

Part 1, training speed. The same fixed synthetic pairs (deterministic prompts and answers of a
realistic length, all within max_seq_len), the same base model (the bundled SmolLM2-135M-Instruct),
the same settings (the trainer's defaults: LoRA r16 / alpha 32 / dropout 0.05 on q,k,v,o, AdamW,
lr 1e-3, linear schedule with 5% warmup, no weight decay, grad clip 1.0, batch 4, max_seq_len 256,
chat-template formatting, loss on the answer tokens only, no packing, float32, no gradient
checkpointing), each side in its own process with the same torch thread count:

    dsc  services.trainer.training.train (the trainer's real loop; checkpoints as configured)
    trl  trl.SFTTrainer with an SFTConfig of the same settings (prompt-completion conversational
         data, completion-only loss; TRL's own defaults otherwise: its optimizer implementation,
         its fused LM head, its metrics), run with .venv-bench's python (`make bench-venv`)

Both methods (LoRA and full fine-tuning), sides alternated, `--repeats` times; medians reported.
Training tokens/s = non-padding tokens of the steps 2..N / time from the end of step 1 to the end
of step N (so model load, tokenisation, the first step's warm-up and the final save are outside
the window, the same way on both sides). Peak RSS is the side's process's ru_maxrss (model load
included). The trainer writes a checkpoint (trainable weights and optimizer state) every save_steps
steps (default 10); the window of `--steps` < 11 holds none, so the trainer's side also reports one
checkpoint's seconds and its tokens/s with that cost spread over save_steps steps (TRL's default
saves every 500 steps; its side saves nothing). `--dsc-unfused` runs the trainer's side with torch's
default AdamW, as the trainer was before it fused it.

Part 2, pipeline: pairs stored in a fresh SQLite database the way a job commits them
(record_chains), a distillation submitted the way POST /admin/distillations does it
(shared.distillation.runs.submit), one TrainerWorker.run_once (snapshot, preflight, train,
evaluate, report, register), then the promotion POST /admin/students/{id}/promote makes
(registry.promote, force: a few evaluation prompts never make a significant gain). Each stage
timed. To fit a 2-core CPU the run trains `--pipeline-steps` steps (default 6; 0: the trainer's
own epochs) and evaluates `--eval-prompts` prompts x 2 samples of 16 tokens with transformers
(the evaluation's engine when vLLM is not used).

    .venv/bin/python bench/distill_speed.py --bench-python .venv-bench/bin/python \\
        [--steps 4] [--repeats 2] [--threads 1] [--methods lora,full] [--pipeline-pairs 100[,500]]

The table prints each side's figures and the dsc/trl ratios; the last line is one JSON object.
Defaults (4 steps, 2 repeats, LoRA and full, 1 thread, the pipeline with 100 pairs) took 17.6 minutes
on a 2-core CPU shared with other work (load average ~10): each training process ~1.5-2 minutes, the
pipeline ~3. `--repeats 1` halves the speed part; the pipeline with 500 pairs adds ~3 minutes more
(`--pipeline-pairs 100,500`: with a fixed step count only the database stages grow, and they take
well under a second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent

# --- the pairs ------------------------------------------------------------------------------------

FILMS = ["Heat", "Alien", "Casablanca", "Up", "Vertigo", "Jaws", "Amelie", "Gravity", "Memento", "Psycho", "Arrival",
         "Spirited Away", "The Third Man", "Paddington 2", "Rear Window", "Moonlight", "Fargo", "Parasite", "Her", "Zodiac"]
ASKS = ["Write a short review of the film {f}.", "What did you think of the movie {f}? Be honest but fair.",
        "Review {f} in a few sentences for a friend who has not seen it.", "Give me your opinion of {f}, a film I found dull.",
        "Describe the film {f} briefly and say whether it is worth watching.", "How was {f}? I am deciding what to watch tonight."]
OPENINGS = ["{f} is a film that rewards patience.", "I came to {f} with low expectations and left pleasantly surprised.",
            "{f} has its flaws, but it is easy to recommend.", "There is a lot to admire in {f}.",
            "{f} is warmer and funnier than its reputation suggests."]
MIDDLES = ["The direction is confident, and the camera lingers just long enough on the small moments.",
           "The lead performance carries the quieter stretches with real charm.",
           "The score does much of the emotional work without ever becoming heavy-handed.",
           "The pacing sags a little in the middle, yet the final act pulls everything together.",
           "Its supporting cast gives the story texture, and several scenes stay with you afterwards.",
           "The screenplay trusts the audience, leaving room to think rather than explaining everything.",
           "Visually it is a treat: careful framing, rich colour and a clear sense of place.",
           "The humour is gentle and well timed, which keeps the darker themes from feeling oppressive."]
CLOSINGS = ["If you enjoy thoughtful storytelling, it is well worth an evening.",
            "Watch it with friends; it makes for a lovely conversation afterwards.",
            "It is not perfect, but it is generous, and that goes a long way.",
            "I would happily watch it again, and I suspect you will enjoy it too."]


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n deterministic (prompt, improved answer) pairs: ~15-25 prompt tokens, ~70-140 answer tokens."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        film = FILMS[i % len(FILMS)] + ("" if i < len(FILMS) else f" (screening {i // len(FILMS)})")
        prompt = rng.choice(ASKS).format(f=film)
        answer = " ".join([rng.choice(OPENINGS).format(f=film), *rng.sample(MIDDLES, rng.randint(2, 5)), rng.choice(CLOSINGS)])
        pairs.append((prompt, answer))
    return pairs


def base_model_path() -> Path:
    from shared.model_store import resolve_model
    from shared.settings import BUNDLED_MODEL, Settings

    return resolve_model(BUNDLED_MODEL, Settings().resolved_model_store)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def window(ends: list[float], tokens: list[int], cpu_ends: list[float]) -> dict:
    """Tokens/s over steps 2..N: ends[i] is when step i+1 ended, tokens[i] its non-padding tokens;
    also per CPU second of the process (cpu_ends: its process_time then), less sensitive to a busy machine."""
    seconds = ends[-1] - ends[0]
    counted = sum(tokens[1:len(ends)])
    cpu = cpu_ends[-1] - cpu_ends[0]
    return {"tokens_per_cpu_s": round(counted / cpu, 1) if cpu > 0 else None, "steps": len(ends), "window_steps": len(ends) - 1, "window_tokens": counted, "window_seconds": round(seconds, 3),
            "tokens_per_s": round(counted / seconds, 1) if seconds > 0 else None,
            "seconds_per_step": round(seconds / (len(ends) - 1), 3) if len(ends) > 1 else None}


# --- side A: the trainer --------------------------------------------------------------------------


def run_dsc(args) -> dict:
    import torch

    import services.trainer.distill as distill
    import services.trainer.training as training
    from shared.distillation.config import DistillationConfig
    from shared.distillation.pairs import Example

    torch.set_num_threads(args.threads)
    config = DistillationConfig(task="sentiment", method=args.method, max_steps=args.steps, seed=0)
    examples = [Example(i + 1, p, r, 0.0, 1.0) for i, (p, r) in enumerate(synthetic_pairs(args.pairs))]
    tokens: list[int] = []
    ends: list[float] = []
    real_collate = distill.collate

    def counting_collate(items, pad_id):
        batch = real_collate(items, pad_id)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    cpu_ends: list[float] = []

    def on_step(step: int, total: int, loss: float) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        return None

    checkpoints: list[float] = []
    real_save = distill._save_checkpoint

    def timed_save(*a, **k):
        began = time.perf_counter()
        try:
            return real_save(*a, **k)
        finally:
            checkpoints.append(time.perf_counter() - began)

    distill.collate, distill._save_checkpoint = counting_collate, timed_save
    if args.dsc_unfused:  # the trainer before it fused AdamW: torch's CPU default, one loop per weight
        distill.adamw = lambda params, c: torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsc-speed-") as tmp:
        result = training.train(config, base_model_path(), examples, Path(tmp), on_step=on_step, device="cpu")
    figures = window(ends, tokens, cpu_ends)
    # A checkpoint every save_steps steps is part of the trainer's training (TRL's default: every 500 steps).
    with_checkpoints = figures["window_seconds"] + figures["window_steps"] / config.save_steps * max(checkpoints)
    return {**figures, "checkpoint_seconds": round(max(checkpoints), 3), "save_steps": config.save_steps,
            "tokens_per_s_with_checkpoints": round(figures["window_tokens"] / with_checkpoints, 1),
            "optimizer": "unfused" if args.dsc_unfused else "trainer's (fused)",
            "total_seconds": round(time.perf_counter() - began, 2), "final_loss": result.losses[-1][1],
            "skipped": result.skipped_examples, "threads": torch.get_num_threads(), "peak_rss_mib": round(peak_rss_mib(), 1)}


# --- side B: TRL ----------------------------------------------------------------------------------


def run_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from shared.distillation.config import DistillationConfig

    torch.set_num_threads(args.threads)
    defaults = DistillationConfig(task="sentiment", method=args.method, max_steps=args.steps, seed=0)
    path = base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pairs = synthetic_pairs(args.pairs)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
                                 for p, r in pairs])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = None
    if args.method == "lora":
        peft_config = LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha, lora_dropout=defaults.lora_dropout,
                                 target_modules=list(defaults.lora_target_modules), task_type="CAUSAL_LM")
    total = defaults.total_steps(len(pairs))
    with tempfile.TemporaryDirectory(prefix="trl-speed-") as tmp:
        config = SFTConfig(
            output_dir=tmp, max_steps=total, per_device_train_batch_size=defaults.batch_size, gradient_accumulation_steps=1,
            learning_rate=defaults.learning_rate, lr_scheduler_type="linear", warmup_steps=int(defaults.warmup_ratio * total),
            weight_decay=defaults.weight_decay, max_grad_norm=1.0, seed=defaults.seed, max_length=defaults.max_seq_len,
            packing=False, padding_free=False, completion_only_loss=True, gradient_checkpointing=False,
            bf16=False, fp16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=10,
            dataloader_num_workers=0, disable_tqdm=True,
        )
        tokens: list[int] = []
        ends: list[float] = []
        cpu_ends: list[float] = []

        class Ends(TrainerCallback):
            def on_step_end(self, *_args, **_kwargs):
                ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())

        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[Ends()])
        real_collator = trainer.data_collator

        def counting_collator(features):
            batch = real_collator(features)
            tokens.append(int(batch["attention_mask"].sum()))
            return batch

        trainer.data_collator = counting_collator
        began = time.perf_counter()
        output = trainer.train()
        total_seconds = time.perf_counter() - began
    return {**window(ends, tokens, cpu_ends), "total_seconds": round(total_seconds, 2), "final_loss": round(output.training_loss, 5),
            "optim": str(config.optim), "trl": trl.__version__, "threads": torch.get_num_threads(),
            "peak_rss_mib": round(peak_rss_mib(), 1)}


# --- part 2: the pipeline -------------------------------------------------------------------------


def run_pipeline(args) -> dict:
    """Stored pairs → submitted run → worker (train, evaluate, report, register) → promoted, each stage timed."""
    import torch

    import services.trainer.worker as worker_module
    from shared.critique_revise import Chain, Step
    from shared.db.models import Job, Student
    from shared.db.session import make_engine, session_factory, transaction, upgrade
    from shared.db.store import record_chains
    from shared.distillation import registry, runs
    from shared.distillation.config import DistillationConfig
    from shared.settings import Settings
    from shared.tasks import preset_tasks

    torch.set_num_threads(args.threads)
    stages: dict[str, float] = {}

    def timed(name: str, function):
        def wrapper(*a, **k):
            began = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - began
        return wrapper

    with tempfile.TemporaryDirectory(prefix="dsc-pipeline-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", model_store=Path(tmp) / "store", engine="transformers",
                            student_base_model=str(base_model_path()), trainer={"device": "cpu", "threads": args.threads})
        settings.data_dir.mkdir(parents=True)
        upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        sessions = session_factory(engine)
        pairs = synthetic_pairs(args.pairs)
        with transaction(sessions) as session:  # the finished job: its accepted pairs, committed as the job commits them
            session.add(Job(id="bench-job", kind="cli", task_name="sentiment", status="succeeded", prompts=[], total=len(pairs),
                            done=len(pairs), accepted=len(pairs)))
            session.flush()
            traces = [Chain(i, 0, p, "It was fine.", 0.0, [Step("warmer", r, 0.9, True)], r, 0.9) for i, (p, r) in enumerate(pairs)]
            record_chains(session, job_id="bench-job", task_name="sentiment", acceptance="improve", traces=traces)

        eval_prompts = preset_tasks()["sentiment"].eval_prompts[:args.eval_prompts]
        body = {"task": "sentiment", "jobs": ["bench-job"], "eval_prompts": eval_prompts, "eval_samples": 2, "eval_max_tokens": 16,
                "min_reward": -1.0}
        if args.pipeline_steps:
            body["max_steps"] = args.pipeline_steps
        began = time.perf_counter()
        run, _ = timed("submit", runs.submit)(sessions, settings, DistillationConfig.model_validate(body))
        saved = {name: getattr(worker_module, name) for name in ("take_snapshot", "preflight", "train", "write_report", "register_student")}
        saved_evaluate = worker_module.TrainerWorker._evaluate
        try:
            worker_module.take_snapshot = timed("snapshot", saved["take_snapshot"])
            worker_module.preflight = timed("preflight", saved["preflight"])
            worker_module.train = timed("train", saved["train"])
            worker_module.write_report = timed("report", saved["write_report"])
            worker_module.register_student = timed("register", saved["register_student"])
            worker_module.TrainerWorker._evaluate = timed("evaluate", saved_evaluate)
            worker = worker_module.TrainerWorker(settings, sessions)
            claimed = timed("worker", worker.run_once)()
        finally:
            for name, function in saved.items():
                setattr(worker_module, name, function)
            worker_module.TrainerWorker._evaluate = saved_evaluate
        with sessions() as session:
            stored = runs.get_run(session, run.id)
            status, error, steps = stored.status, stored.error, (stored.metrics or {}).get("train", {}).get("steps")
            student_id = session.query(Student.id).filter(Student.run_id == run.id).scalar()
        if not claimed or status != "succeeded" or student_id is None:
            raise RuntimeError(f"the run did not succeed: {status} {error}")
        promoted = timed("promote", registry.promote)(sessions, student_id, force=True)
        total = time.perf_counter() - began
        engine.dispose()
    named = ("submit", "snapshot", "preflight", "train", "evaluate", "report", "register", "promote")
    rest = stages["worker"] - sum(stages.get(name, 0.0) for name in named if name not in ("submit", "promote"))
    return {"pairs": args.pairs, "steps": steps, "active": bool(promoted.active), "total_seconds": round(total, 2),
            "stages": {**{name: round(stages.get(name, 0.0), 3) for name in named}, "worker_other": round(rest, 3)},
            "peak_rss_mib": round(peak_rss_mib(), 1)}


# --- the driver -----------------------------------------------------------------------------------


def child(python: str, side: str, args, **extra) -> dict:
    command = [python, str(Path(__file__).resolve()), "--side", side, "--threads", str(args.threads), "--steps", str(args.steps),
               "--pairs", str(extra.get("pairs", args.pairs)), "--method", extra.get("method", "lora"),
               "--pipeline-steps", str(args.pipeline_steps), "--eval-prompts", str(args.eval_prompts)]
    command += ["--dsc-unfused"] if args.dsc_unfused else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{side} {extra} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench-python", default=str(ROOT / ".venv-bench" / "bin" / "python"), help="python of .venv-bench (TRL)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per training run (speed part)")
    parser.add_argument("--pairs", type=int, default=100, help="synthetic pairs of the speed part")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--pipeline-pairs", default="100", help="pair counts of the pipeline part (comma-separated; empty: skip)")
    parser.add_argument("--pipeline-steps", type=int, default=6, help="steps of the pipeline's run (0: the trainer's epochs)")
    parser.add_argument("--eval-prompts", type=int, default=3, help="evaluation prompts of the pipeline's run")
    parser.add_argument("--dsc-unfused", action="store_true",
                        help="the trainer's side with torch's default (unfused) AdamW, as before the trainer fused it")
    parser.add_argument("--side", choices=["dsc", "trl", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps({"dsc": run_dsc, "trl": run_trl, "pipeline": run_pipeline}[args.side](args)))
        return

    started = time.perf_counter()
    methods = [m for m in args.methods.split(",") if m]
    speed: dict[str, dict[str, list[dict]]] = {m: {"dsc": [], "trl": []} for m in methods}
    for repeat in range(args.repeats):
        for method in methods:
            order = ("dsc", "trl") if repeat % 2 == 0 else ("trl", "dsc")  # alternate who goes first
            for side in order:
                python = sys.executable if side == "dsc" else args.bench_python
                figures = child(python, side, args, method=method)
                speed[method][side].append(figures)
                print(f"  {method:4} {side:3} repeat {repeat + 1}: {figures['tokens_per_s']} tok/s, {figures['peak_rss_mib']} MiB",
                      file=sys.stderr)
    pipeline = [child(sys.executable, "pipeline", args, pairs=int(n)) for n in args.pipeline_pairs.split(",") if n.strip()]

    summary = {}
    for method in methods:
        row = {}
        for side in ("dsc", "trl"):
            runs_ = speed[method][side]
            row[side] = {"tokens_per_s": median([r["tokens_per_s"] for r in runs_]),
                         "tokens_per_cpu_s": median([r["tokens_per_cpu_s"] for r in runs_]),
                         "peak_rss_mib": median([r["peak_rss_mib"] for r in runs_]),
                         "seconds_per_step": median([r["seconds_per_step"] for r in runs_]),
                         "window_tokens": runs_[0]["window_tokens"], "runs": [r["tokens_per_s"] for r in runs_]}
        row["dsc"]["tokens_per_s_with_checkpoints"] = median([r["tokens_per_s_with_checkpoints"] for r in speed[method]["dsc"]])
        row["dsc"]["checkpoint_seconds"] = median([r["checkpoint_seconds"] for r in speed[method]["dsc"]])
        row["tokens_per_s_ratio"] = round(row["dsc"]["tokens_per_s"] / row["trl"]["tokens_per_s"], 3)
        row["tokens_per_cpu_s_ratio"] = round(row["dsc"]["tokens_per_cpu_s"] / row["trl"]["tokens_per_cpu_s"], 3)
        row["peak_rss_ratio"] = round(row["dsc"]["peak_rss_mib"] / row["trl"]["peak_rss_mib"], 3)
        row["trl_optim"] = speed[method]["trl"][0]["optim"]
        summary[method] = row

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    trl_version = speed[methods[0]]["trl"][0]["trl"] if methods else "-"
    table = Table(title=f"training speed: dSC trainer vs TRL {trl_version} SFTTrainer "
                        f"({args.pairs} pairs, {args.steps} steps, {args.threads} thread(s), medians of {args.repeats})")
    for column in ("method", "dSC tok/s", "TRL tok/s", "dSC/TRL", "per CPU s dSC/TRL", "dSC s/step", "TRL s/step", "dSC ckpt s", "dSC tok/s w/ ckpt",
                   "dSC peak MiB", "TRL peak MiB", "RSS dSC/TRL"):
        table.add_column(column, justify="right")
    for method, row in summary.items():
        table.add_row(method, str(row["dsc"]["tokens_per_s"]), str(row["trl"]["tokens_per_s"]), f"{row['tokens_per_s_ratio']:.2f}",
                      f"{row['tokens_per_cpu_s_ratio']:.2f}",
                      str(row["dsc"]["seconds_per_step"]), str(row["trl"]["seconds_per_step"]), str(row["dsc"]["checkpoint_seconds"]),
                      str(row["dsc"]["tokens_per_s_with_checkpoints"]), str(row["dsc"]["peak_rss_mib"]),
                      str(row["trl"]["peak_rss_mib"]), f"{row['peak_rss_ratio']:.2f}")
    if summary:
        console.print(table)
    if pipeline:
        stages = Table(title="finished job → promoted student (seconds)")
        names = list(pipeline[0]["stages"])
        for column in ("pairs", "steps", *names, "total"):
            stages.add_column(column, justify="right")
        for row in pipeline:
            stages.add_row(str(row["pairs"]), str(row["steps"]), *(f"{row['stages'][n]:.2f}" for n in names), f"{row['total_seconds']:.1f}")
        console.print(stages)

    met = {f"{m}_at_least_trl": summary[m]["tokens_per_s_ratio"] >= 1.0 for m in ("lora", "full") if m in summary}
    print(json.dumps({
        "bench": "distill_speed", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"pairs": args.pairs, "steps": args.steps, "threads": args.threads, "repeats": args.repeats, "dtype": "float32",
                     "batch_size": 4, "max_seq_len": 256, "pipeline_steps": args.pipeline_steps, "eval_prompts": args.eval_prompts},
        "speed": summary, "pipeline": pipeline, "seconds": round(time.perf_counter() - started, 1),
        "targets": {"lora_tokens_per_s_ratio_min": 1.0, "full_tokens_per_s_ratio_min": 1.0}, "met": met,
    }))


if __name__ == "__main__":
    main()
