"""Distillation recipes side by side: which data and training settings make a student that beats its
base on prompts it never saw.

One run samples a pool of critique→revise chains over the task's training prompts (vLLM), has the
teacher chain answer the task's evaluation set (K chains per prompt), and has the base model answer
it (K samples); all three are cached in the work directory. Then every recipe trains a student
from the same pool with the trainer's own code (selection, LoRA/full SFT, and for a preference
objective DPO on the pool's preference pairs, selected as a run selects them) and is evaluated with
the trainer's own evaluation (K samples per prompt, bootstrap CIs, collapse check). With `--seeds`
every recipe trains once per training seed (data order, LoRA init, dropout), on the same pool and
the same evaluation draws, so the spread across seeds is the training's own.

    .venv/bin/python bench/distill_recipe.py --task sentiment --work /tmp/recipes --seeds 0,1,2 \\
        --recipe 'sft={}' --recipe 'dpo={"objective": "dpo"}' --recipe 'sft-dpo={"objective": "sft_dpo"}'

The table prints student − base with its 95% CI and the share of the teacher's gain per seed, then
per recipe the mean over seeds with a 95% t-interval across them; the last line is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _save(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False))


def build_pool(args, task, reward, settings, eval_prompts):
    """Chains over the training prompts and the teacher's answers to the eval set, cached."""
    from services.trainer.evaluation_figures import teacher_answers
    from shared.engines import create_engine
    from shared.engines.base import SamplingParams
    from shared.critique_revise import Sampler

    pool_file, teacher_file = args.work / "pool.json", args.work / "teacher_eval.json"
    pool, teacher = _load(pool_file), _load(teacher_file)
    if pool is not None and teacher is not None:
        return pool, teacher
    engine = create_engine(settings, settings.teacher_model, engine="vllm")
    try:
        if pool is None:
            started = time.monotonic()
            params = SamplingParams(temperature=0.7, max_tokens=args.pool_max_tokens, seed=args.seed)
            sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request)
            chains = sampler.run(task.prompts[: args.prompts], steps=args.steps, chains=args.chains, acceptance=task.acceptance,
                                 beta=task.beta, params=params)
            pool = {"seconds": round(time.monotonic() - started, 1), "chains": [
                {"prompt": c.prompt, "chain": c.chain_index, "initial": c.initial_text, "initial_reward": c.initial_reward,
                 "final": c.final_text, "final_reward": c.final_reward, "accepted": c.accepted} for c in chains]}
            _save(pool_file, pool)
        if teacher is None:
            eval_params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
            teacher = teacher_answers(engine, task, reward, eval_prompts, args.samples, eval_params)
            _save(teacher_file, teacher)
        return pool, teacher
    finally:
        engine.close()


def _share(g: dict) -> str:
    return "n/a" if g["value"] is None or g["low"] is None else f"{g['value']:.2f} [{g['low']:.2f}, {g['high']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=1000, help="training prompts to sample (first N of the task's set)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--pool-max-tokens", type=int, default=96)
    parser.add_argument("--eval-prompts", type=int, default=1000, help="evaluate on the first N of the task's eval set")
    parser.add_argument("--samples", type=int, default=4, help="K answers per eval prompt and system")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use-chains", type=int, default=1000, help="train on the first N chains of each prompt only")
    parser.add_argument("--use-prompts", type=int, default=1000, help="train on the first N prompts' chains only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    parser.add_argument("--pool-only", action="store_true", help="sample the pool and the teacher's eval answers, then stop")
    parser.add_argument("--recipe", action="append", default=[], help="NAME=JSON of DistillationConfig fields")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: each recipe trains once per seed")
    parser.add_argument("--reuse", action="store_true", help="evaluate a recipe's student already trained in the work "
                        "directory (its merged weights and result file) instead of training it again")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.table import Table

    from shared.distillation.config import DistillationConfig
    from shared.distillation.pairs import Example, barred_prompts, plan_data
    from shared.distillation.preferences import training_preferences
    from services.trainer.training import train
    from shared.model_store import merge_adapter
    from services.trainer.evaluation_figures import collapse_check, compare, gate, general_prompts, sample_answers, score
    from shared.engines.base import SamplingParams
    from shared.engines.transformers_engine import TransformersEngine
    from shared.engines.vllm_engine import VLLMEngine
    from shared.model_store import resolve_model
    from shared.rewards import build_reward
    from shared.settings import Settings
    from shared.tasks import preset_tasks

    console = Console(width=200)
    settings = Settings(vllm={"enforce_eager": True})
    task = preset_tasks()[args.task]
    reward = build_reward(task.reward)
    second = build_reward(task.second_opinion) if task.second_opinion else None  # the evaluation's own second opinion
    base_path = resolve_model(settings.student_base_model, settings.resolved_model_store)
    eval_prompts = list(task.eval_prompts)[: args.eval_prompts]
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    general = general_prompts()

    pool, teacher = build_pool(args, task, reward, settings, eval_prompts)
    if args.pool_only:
        return
    prompts_used = set(task.prompts[: args.use_prompts])
    accepted = [c for c in pool["chains"] if c["accepted"] and c["chain"] < args.use_chains and c["prompt"] in prompts_used]
    console.print(f"pool: {len(pool['chains'])} chains, {len(accepted)} accepted ({pool['seconds']} s)")
    examples = [Example(i, c["prompt"], c["final"], c["initial_reward"], c["final_reward"]) for i, c in enumerate(accepted)]
    chains = pool_chains(pool, task, prompts_used, args.use_chains)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base_file = args.work / "base_eval.json"
    base_data = _load(base_file)
    scorer = TransformersEngine(base_path)
    engine = VLLMEngine(base_path, enforce_eager=True)
    if base_data is None:
        started = time.monotonic()
        base_answers = sample_answers(engine, eval_prompts, args.samples, params)
        base_general = [g[0] for g in sample_answers(engine, general, 1, params)]
        base_data = {"answers": base_answers, "general": base_general, "seconds": round(time.monotonic() - started, 1)}
        _save(base_file, base_data)
    systems = {"base": score(reward, eval_prompts, base_data["answers"], second), "teacher": score(reward, eval_prompts, teacher, second)}

    rows = []
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for spec in args.recipe or ["default={}"]:
        name, _, body = spec.partition("=")
        for seed in seeds:
            config = DistillationConfig(task=args.task, **{**json.loads(body or "{}"), "seed": seed})
            train_examples, _ = plan_data(examples, config, task)
            preferences = training_preferences(chains, config, barred_prompts(config, task.eval_prompts)) if config.prefers else []
            run_dir = args.work / "runs" / f"{name}-seed{seed}"
            earlier = _load(args.work / f"result-{name}-seed{seed}.json") if args.reuse and (run_dir / "merged").is_dir() else None
            if earlier is None:
                started = time.monotonic()
                result = train(config, base_path, train_examples, run_dir, preferences=preferences)
                trained = {"steps": result.steps, "train_seconds": round(time.monotonic() - started), "preference": result.preference,
                           "final_loss10": round(sum(v for _, v in result.losses[-10:]) / min(10, len(result.losses)), 3)}
                merged = result.merged_dir or merge_adapter(base_path, result.adapter_dir, run_dir / "merged")
            else:
                trained, merged = {key: earlier[key] for key in ("steps", "train_seconds", "preference", "final_loss10")}, run_dir / "merged"
            started = time.monotonic()
            student = VLLMEngine(merged, enforce_eager=True)
            student_answers = sample_answers(student, eval_prompts, args.samples, params)
            figures = compare(eval_prompts, {**systems, "student": score(reward, eval_prompts, student_answers, second)}, seed=args.seed)
            student_general = [g[0] for g in sample_answers(student, general, 1, params)]
            figures["collapse"] = collapse_check(scorer, general, base_data["general"], student_general)
            figures["gate"] = gate(figures)
            eval_seconds = time.monotonic() - started
            student.close()
            row = {"recipe": name, "seed": seed, "config": json.loads(body or "{}"), "pairs": len(train_examples),
                   "preferences": len(preferences), **trained, "eval_seconds": round(eval_seconds),
                   **{k: figures.get(k) for k in ("systems", "student_minus_base", "win_rate", "gain_share", "collapse", "gate",
                                                  "second_opinion", "degeneration")}}
            rows.append(row)
            _save(args.work / f"result-{name}-seed{seed}.json", {**row, "per_prompt": figures["per_prompt"], "examples": figures["examples"]})
            console.print(f"{name} seed {seed}: student {figures['systems']['student']['value']:.3f}, "
                          f"student−base {figures['student_minus_base']}, share {figures['gain_share']}")

    table = Table(title=f"{args.task}: {len(eval_prompts)} eval prompts × {args.samples} samples")
    for column in ("recipe", "seed", "pairs", "prefs", "steps", "train s", "base", "teacher", "student", "student − base [95% CI]",
                   "share of teacher gain", "second opinion: student − base", "ppl ratio", "gate"):
        table.add_column(column, justify="right")
    for row in rows:
        s, d, g = row["systems"], row["student_minus_base"], row["gain_share"]
        o = (row["second_opinion"] or {}).get("student_minus_base")
        table.add_row(row["recipe"], str(row["seed"]), str(row["pairs"]), str(row["preferences"]), str(row["steps"]), str(row["train_seconds"]),
                      f"{s['base']['value']:.3f}", f"{s['teacher']['value']:.3f}", f"{s['student']['value']:.3f}",
                      f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]", _share(g),
                      f"{o['value']:+.3f} [{o['low']:+.3f}, {o['high']:+.3f}]" if o else "—",
                      f"{row['collapse']['ppl_ratio']:.2f}", "promotable" if row["gate"]["promotable"] else row["gate"]["reason"])
    console.print(table)
    summary = across_seeds(rows)
    if len(seeds) > 1:
        table = Table(title=f"{args.task}: over {len(seeds)} training seeds (95% t-interval across seeds)")
        for column in ("recipe", "student (mean)", "student − base (mean) [95% CI]", "sd across seeds", "teacher chain", "student ≥ chain",
                       "second opinion gain (mean)", "seeds promotable"):
            table.add_column(column, justify="right")
        for item in summary:
            second_gain = item["second_opinion_gain"]
            table.add_row(item["recipe"], f"{item['student']:.3f}", f"{item['mean']:+.3f} [{item['low']:+.3f}, {item['high']:+.3f}]",
                          f"{item['sd']:.3f}", f"{item['teacher']:.3f}", "yes" if item["student"] >= item["teacher"] else "no",
                          "—" if second_gain is None else f"{second_gain:+.3f}", f"{item['promotable']}/{item['seeds']}")
        console.print(table)
    print(json.dumps({"bench": "distill_recipe", "task": args.task, "pool_chains": len(pool["chains"]), "accepted": len(accepted),
                      "seeds": seeds, "summary": summary,
                      "rows": [{k: v for k, v in row.items() if k != "collapse"} | {"ppl_ratio": row["collapse"]["ppl_ratio"]} for row in rows]}))


def pool_chains(pool: dict, task, prompts_used: set[str], use_chains: int):
    """The pool's chains as a run reads them from the database (grouped by prompt, in prompt order)."""
    from shared.distillation.preferences import ChainAnswers

    order = {prompt: index for index, prompt in enumerate(task.prompts)}
    kept = sorted((c for c in pool["chains"] if c["chain"] < use_chains and c["prompt"] in prompts_used),
                  key=lambda c: (order.get(c["prompt"], len(order)), c["chain"]))
    return [ChainAnswers(i, "pool", order.get(c["prompt"], len(order)), task.name, c["prompt"], c["initial"], c["initial_reward"],
                         c["final"], c["final_reward"]) for i, c in enumerate(kept)]


def across_seeds(rows: list[dict]) -> list[dict]:
    """Per recipe: mean student score and student − base over the seeds, the standard deviation
    across seeds, and a 95% t-interval of the mean (the training's own spread; each seed's bootstrap
    interval covers the evaluation's)."""
    from statistics import mean, stdev

    from scipy.stats import t

    out = []
    for name in dict.fromkeys(row["recipe"] for row in rows):
        mine = [row for row in rows if row["recipe"] == name]
        gains = [row["student_minus_base"]["value"] for row in mine]
        sd = stdev(gains) if len(gains) > 1 else 0.0
        half = t.ppf(0.975, len(gains) - 1) * sd / len(gains) ** 0.5 if len(gains) > 1 else 0.0
        out.append({"recipe": name, "seeds": len(mine), "mean": round(mean(gains), 4), "low": round(mean(gains) - half, 4),
                    "high": round(mean(gains) + half, 4), "sd": round(sd, 4),
                    "student": round(mean(row["systems"]["student"]["value"] for row in mine), 4),
                    "teacher": mine[0]["systems"]["teacher"]["value"],
                    "second_opinion_gain": round(mean(row["second_opinion"]["student_minus_base"]["value"] for row in mine), 4)
                    if all(row["second_opinion"] for row in mine) else None,
                    "promotable": sum(bool(row["gate"]["promotable"]) for row in mine)})
    return out


if __name__ == "__main__":
    main()
