"""Distillation recipes side by side: which data and training settings make a student that beats its
base on prompts it never saw.

One run samples a pool of critique→revise chains over the task's training prompts (vLLM), has the
teacher chain answer the task's evaluation set (K chains per prompt), and has the base model answer
it (K samples); all three are cached in the work directory. Then every recipe trains a student
from the same pool with the trainer's own code (selection, LoRA/full SFT, and for a preference
objective DPO on the pool's preference pairs, selected as a run selects them) and is evaluated with
the trainer's own evaluation (K samples per prompt, bootstrap CIs, collapse check). With `--seeds`
every recipe trains once per training seed (data order, LoRA init, dropout), on the same pool and
the same evaluation draws, so the spread across seeds is the training's own. With `--round-of R`
every recipe is a second round instead: per seed, the student that recipe R trained with that
seed samples a new pool (drafts, critiques and revisions, scored by the same reward), the recipe
trains a student from the base on it, and the evaluation compares it with the round-1 student on
the same draws (the gate's incumbent check) as well as with the base.

    .venv/bin/python bench/distill_recipe.py --task sentiment --work /tmp/recipes --seeds 0,1,2 \\
        --recipe 'sft={}' --recipe 'dpo={"objective": "dpo"}' --recipe 'sft-dpo={"objective": "sft_dpo"}'
    .venv/bin/python bench/distill_recipe.py --task sentiment --work /tmp/recipes --seeds 0,1,2 \\
        --round-of sft --recipe 'round2={}'

The table prints student − base with its 95% CI and the share of the teacher's gain per seed, then
per recipe the mean over seeds with a 95% t-interval across them; the last line is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import cache
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

    pool_file, teacher_file = args.work / "pool.json", args.work / "teacher_eval.json"
    pool, teacher = _load(pool_file), _load(teacher_file)
    if pool is not None and teacher is not None:
        return pool, teacher
    engine = create_engine(settings, settings.teacher_model, engine="vllm")
    try:
        if pool is None:
            pool = sample_pool(args, task, reward, engine)
            _save(pool_file, pool)
        if teacher is None:
            eval_params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
            teacher = teacher_answers(engine, task, reward, eval_prompts, args.samples, eval_params)
            _save(teacher_file, teacher)
        return pool, teacher
    finally:
        engine.close()


def sample_pool(args, task, reward, engine) -> dict:
    """Critique→revise chains over the first `--prompts` training prompts, proposed by `engine`'s model."""
    from shared.critique_revise import Sampler
    from shared.engines.base import SamplingParams

    started = time.monotonic()
    params = SamplingParams(temperature=0.7, max_tokens=args.pool_max_tokens, seed=args.seed)
    sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request)
    chains = sampler.run(task.prompts[: args.prompts], steps=args.steps, chains=args.chains, acceptance=task.acceptance,
                         beta=task.beta, params=params)
    return {"seconds": round(time.monotonic() - started, 1), "chains": [
        {"prompt": c.prompt, "chain": c.chain_index, "initial": c.initial_text, "initial_reward": c.initial_reward,
         "final": c.final_text, "final_reward": c.final_reward, "accepted": c.accepted,
         "initial_truncated": c.initial_truncated, "final_truncated": c.final_truncated}
        for c in chains]}


def round_pool(args, task, reward, parent: str, seed: int) -> tuple[dict, Path]:
    """A round-2 pool: the same chains, proposed, critiqued and revised by the round-1 student that
    recipe `parent` trained with `seed` (its merged weights, as the teacher runs a student), cached."""
    from shared.engines.vllm_engine import VLLMEngine

    merged, pool_file = args.work / "runs" / f"{parent}-seed{seed}" / "merged", args.work / f"pool-{parent}-seed{seed}.json"
    if not merged.is_dir():
        raise SystemExit(f"--round-of {parent}: no round-1 student at {merged}; train recipe {parent!r} with seed {seed} first")
    pool = _load(pool_file)
    if pool is None:
        engine = VLLMEngine(merged, enforce_eager=True)
        try:
            pool = sample_pool(args, task, reward, engine)
        finally:
            engine.close()
        _save(pool_file, pool)
    return pool, merged


def pool_examples(pool: dict, task, args, model_path: Path):
    """The pool's accepted chains as SFT examples and all its chains as a run reads them (preference pairs)."""
    from shared.distillation.pairs import Example

    prompts_used = set(task.prompts[: args.use_prompts])
    accepted = [c for c in pool["chains"] if c["accepted"] and c["chain"] < args.use_chains and c["prompt"] in prompts_used]
    examples = [Example(i, c["prompt"], c["final"], c["initial_reward"], c["final_reward"], final_truncated(c, model_path, args))
                for i, c in enumerate(accepted)]
    return accepted, examples, pool_chains(pool, task, prompts_used, args.use_chains)


@cache
def _tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def final_truncated(chain: dict, model_path: Path, args) -> bool:
    """Whether the chain's final answer was cut off at the pool's token limit. Pools sampled before
    the sampler recorded it count an answer of --pool-max-tokens tokens as cut off."""
    if "final_truncated" in chain:
        return chain["final_truncated"]
    return len(_tokenizer(model_path)(chain["final"], add_special_tokens=False)["input_ids"]) >= args.pool_max_tokens


def pool_figures(pool: dict) -> dict:
    """What the proposing model's chains look like: mean draft and final reward, best final per prompt."""
    from statistics import mean

    best: dict[str, float] = {}
    for c in pool["chains"]:
        best[c["prompt"]] = max(best.get(c["prompt"], float("-inf")), c["final_reward"])
    return {"chains": len(pool["chains"]), "accepted": sum(c["accepted"] for c in pool["chains"]),
            "draft": round(mean(c["initial_reward"] for c in pool["chains"]), 4),
            "final": round(mean(c["final_reward"] for c in pool["chains"]), 4), "best": round(mean(best.values()), 4),
            "seconds": pool["seconds"]}


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
    parser.add_argument("--round-of", default=None, metavar="RECIPE",
                        help="round 2: train every recipe on chains sampled by the student that RECIPE trained with the "
                             "same seed in this work directory (a pool per seed, cached), and compare with that student")
    parser.add_argument("--reuse", action="store_true", help="evaluate a recipe's student already trained in the work "
                        "directory (its merged weights and result file) instead of training it again")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.table import Table

    from shared.distillation.config import DistillationConfig
    from shared.distillation.pairs import barred_prompts, plan_data
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
    accepted, examples, chains = pool_examples(pool, task, args, base_path)
    console.print(f"pool: {pool_figures(pool)}")

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
            parent = None
            if args.round_of:
                round_data, parent_dir = round_pool(args, task, reward, args.round_of, seed)
                accepted, examples, chains = pool_examples(round_data, task, args, base_path)
                parent = _load(args.work / f"result-{args.round_of}-seed{seed}.json")
                if parent is None or "answers" not in parent:
                    raise SystemExit(f"--round-of {args.round_of}: its seed-{seed} result has no answers; evaluate it again")
                console.print(f"round 2 pool from {parent_dir}: {pool_figures(round_data)}")
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
            incumbent = {"incumbent": score(reward, eval_prompts, parent["answers"], second)} if parent else {}
            figures = compare(eval_prompts, {**systems, **incumbent, "student": score(reward, eval_prompts, student_answers, second)},
                              seed=args.seed)
            student_general = [g[0] for g in sample_answers(student, general, 1, params)]
            figures["collapse"] = collapse_check(scorer, general, base_data["general"], student_general)
            figures["gate"] = gate(figures)
            eval_seconds = time.monotonic() - started
            student.close()
            row = {"recipe": name, "seed": seed, "config": json.loads(body or "{}"), "pairs": len(train_examples),
                   "preferences": len(preferences), **trained, "eval_seconds": round(eval_seconds),
                   **({"round_of": args.round_of, "pool": pool_figures(round_data)} if parent else {}),
                   **{k: figures.get(k) for k in ("systems", "student_minus_base", "student_minus_incumbent", "win_rate",
                                                  "gain_share", "collapse", "gate", "second_opinion", "degeneration")}}
            rows.append(row)
            _save(args.work / f"result-{name}-seed{seed}.json", {**row, "per_prompt": figures["per_prompt"], "examples": figures["examples"],
                                                                 "answers": student_answers})
            console.print(f"{name} seed {seed}: student {figures['systems']['student']['value']:.3f}, "
                          f"student−base {figures['student_minus_base']}, share {figures['gain_share']}"
                          + (f", student−round 1 {figures['student_minus_incumbent']}" if parent else ""))

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
                       "second opinion gain (mean)", "student − round 1 (mean) [95% CI]", "seeds promotable"):
            table.add_column(column, justify="right")
        for item in summary:
            second_gain, versus = item["second_opinion_gain"], item["minus_round_1"]
            table.add_row(item["recipe"], f"{item['student']:.3f}", f"{item['mean']:+.3f} [{item['low']:+.3f}, {item['high']:+.3f}]",
                          f"{item['sd']:.3f}", f"{item['teacher']:.3f}", "yes" if item["student"] >= item["teacher"] else "no",
                          "—" if second_gain is None else f"{second_gain:+.3f}",
                          "—" if versus is None else f"{versus['mean']:+.3f} [{versus['low']:+.3f}, {versus['high']:+.3f}]",
                          f"{item['promotable']}/{item['seeds']}")
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
                         c["final"], c["final_reward"], c.get("initial_truncated"), c.get("final_truncated")) for i, c in enumerate(kept)]


def across_seeds(rows: list[dict]) -> list[dict]:
    """Per recipe: mean student score and student − base over the seeds, the standard deviation
    across seeds, and a 95% t-interval of the mean (the training's own spread; each seed's bootstrap
    interval covers the evaluation's)."""
    from statistics import mean, stdev

    from scipy.stats import t

    def interval(values: list[float]) -> dict:
        sd = stdev(values) if len(values) > 1 else 0.0
        half = t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5 if len(values) > 1 else 0.0
        return {"mean": round(mean(values), 4), "low": round(mean(values) - half, 4), "high": round(mean(values) + half, 4),
                "sd": round(sd, 4)}

    out = []
    for name in dict.fromkeys(row["recipe"] for row in rows):
        mine = [row for row in rows if row["recipe"] == name]
        versus_parent = [row.get("student_minus_incumbent") for row in mine]
        out.append({"recipe": name, "seeds": len(mine), **interval([row["student_minus_base"]["value"] for row in mine]),
                    "minus_round_1": interval([v["value"] for v in versus_parent]) if all(versus_parent) else None,
                    "student": round(mean(row["systems"]["student"]["value"] for row in mine), 4),
                    "teacher": mine[0]["systems"]["teacher"]["value"],
                    "second_opinion_gain": round(mean(row["second_opinion"]["student_minus_base"]["value"] for row in mine), 4)
                    if all(row["second_opinion"] for row in mine) else None,
                    "promotable": sum(bool(row["gate"]["promotable"]) for row in mine)})
    return out


if __name__ == "__main__":
    main()
