"""Does the student beat its base on prompts it never saw? Measured so that noise cannot pass for a gain.

Every system (base, student, optionally the teacher's critique→revise chain) answers the same
evaluation prompts with the same sampling, K times each (default 4). The task's reward scores every
answer. `compare` then reports, with cluster-bootstrap 95% intervals over prompts (shared.stats):

    mean reward of each system
    student − base (paired)            significant when its interval excludes 0
    win rate of student over base      share of prompts whose mean reward the student raised
    share of the teacher's gain        (student − base) / (teacher − base)

A collapse check runs beside it: base and student answer a few general instructions unrelated to
the task, and the *base* model's perplexity of each answer is compared. A student that learned to
say one pleasant sentence to everything gets a high perplexity ratio (or very short answers) there,
whatever its reward.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from shared import stats
from shared.engines.base import Engine, SamplingParams
from shared.rewards.base import RewardModel

# A student whose general answers the base model finds this much less likely, or that answers in
# less than this share of the base's words, is flagged as collapsed.
COLLAPSE_PPL_RATIO = 2.0
COLLAPSE_LENGTH_RATIO = 0.5
# Below this many prompts a percentile bootstrap is too optimistic to call any gain significant
# (with 3 prompts whose gaps all happen to be positive, every resample is positive).
MIN_PROMPTS_FOR_SIGNIFICANCE = 10


@dataclass
class SystemAnswers:
    """K answers per prompt and their rewards, prompt-major."""

    answers: list[list[str]]
    rewards: list[list[float]]


def sample_answers(engine: Engine, prompts: Sequence[str], samples: int, params: SamplingParams) -> list[list[str]]:
    """`samples` answers to every prompt, in one batch (each request seeded apart by the engine)."""
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts for _ in range(samples)]
    texts = [generation.text for generation in engine.generate(conversations, params)]
    return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def teacher_answers(engine: Engine, task, reward: RewardModel, prompts: Sequence[str], samples: int,
                    params: SamplingParams) -> list[list[str]]:
    """The final answers of `samples` critique→revise chains per prompt (the task's own steps and acceptance)."""
    from shared.critique_revise import Sampler

    sampler = Sampler(engine, reward, critique_request=task.critique_request, revision_request=task.revision_request)
    chains = sampler.run(list(prompts), steps=task.steps, chains=samples, acceptance=task.acceptance, beta=task.beta, params=params)
    return [[chain.final_text for chain in chains[i * samples:(i + 1) * samples]] for i in range(len(prompts))]


def score(reward: RewardModel, prompts: Sequence[str], answers: list[list[str]]) -> SystemAnswers:
    flat_prompts = [prompt for prompt, group in zip(prompts, answers) for _ in group]
    flat = [float(x) for x in reward.score(flat_prompts, [text for group in answers for text in group])]
    rewards, start = [], 0
    for group in answers:
        rewards.append(flat[start:start + len(group)])
        start += len(group)
    return SystemAnswers(answers, rewards)


def compare(prompts: Sequence[str], systems: dict[str, SystemAnswers], *, seed: int = 0, examples: int = 4) -> dict[str, Any]:
    """The evaluation figures of `systems` ('base' and 'student' required, 'teacher' optional)."""
    base, student, teacher = systems["base"].rewards, systems["student"].rewards, systems.get("teacher")
    gap = stats.difference(student, base, seed=seed)
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "samples": max(len(group) for group in base),
        "systems": {name: stats.mean(system.rewards, seed=seed).as_dict(null=None) for name, system in systems.items()},
        "student_minus_base": gap.as_dict(),
        "win_rate": stats.win_rate(student, base, seed=seed).as_dict(null=0.5),
        "significant": gap.low > 0 and len(prompts) >= MIN_PROMPTS_FOR_SIGNIFICANCE,
    }
    if teacher is not None:
        result["teacher_minus_base"] = stats.difference(teacher.rewards, base, seed=seed).as_dict()
        result["gain_share"] = stats.gain_share(student, base, teacher.rewards, seed=seed).as_dict(null=None)
    means = {name: stats.prompt_means(system.rewards) for name, system in systems.items()}
    result["per_prompt"] = [
        {"prompt": prompt, **{name: round(float(values[i]), 4) for name, values in means.items()}}
        for i, prompt in enumerate(prompts)
    ]
    order = sorted(range(len(prompts)), key=lambda i: means["student"][i] - means["base"][i], reverse=True)
    result["examples"] = [
        {"prompt": prompts[i], **{name: system.answers[i][0] for name, system in systems.items()},
         **{f"{name}_reward": round(system.rewards[i][0], 4) for name, system in systems.items()}}
        for i in order[:examples]
    ]
    return result


# --- collapse check -------------------------------------------------------------------------------


def answer_perplexity(scorer, prompts: Sequence[str], answers: Sequence[str], max_seq_len: int = 512) -> list[float]:
    """Perplexity of each answer under `scorer` (a TransformersEngine: its model and tokenizer),
    given its prompt in the chat template; the loss covers the answer tokens only."""
    import torch

    from services.trainer.data import collate, tokenize_example
    from shared.distillation.pairs import Example

    out: list[float] = []
    model, tokenizer = scorer.hf_model, scorer.tokenizer
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), 16):
        items = [tokenize_example(tokenizer, Example(None, p, a or " "), max_seq_len, min_answer_tokens=1)
                 for p, a in zip(prompts[start:start + 16], answers[start:start + 16])]
        kept = [item for item in items if item is not None]
        if not kept:
            continue
        batch = {name: tensor.to(model.device) for name, tensor in collate(kept, pad).items()}
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(dim=1).clamp(min=1)
        out.extend(math.exp(float(v)) for v in losses.sum(dim=1) / counts)
    return out


def collapse_check(scorer, prompts: Sequence[str], base_answers: Sequence[str], student_answers: Sequence[str]) -> dict[str, Any]:
    """Base-model perplexity and length of base vs student answers to general instructions."""
    base_ppl = statistics.median(answer_perplexity(scorer, prompts, base_answers))
    student_ppl = statistics.median(answer_perplexity(scorer, prompts, student_answers))
    base_words = statistics.fmean(len(text.split()) for text in base_answers)
    student_words = statistics.fmean(len(text.split()) for text in student_answers)
    ppl_ratio = student_ppl / base_ppl if base_ppl > 0 else math.inf
    length_ratio = student_words / base_words if base_words > 0 else 0.0
    return {
        "prompts": len(prompts),
        "base_ppl_of_base_answers": round(base_ppl, 3),
        "base_ppl_of_student_answers": round(student_ppl, 3),
        "ppl_ratio": round(ppl_ratio, 3),
        "words": {"base": round(base_words, 1), "student": round(student_words, 1)},
        "length_ratio": round(length_ratio, 3),
        "collapsed": ppl_ratio > COLLAPSE_PPL_RATIO or length_ratio < COLLAPSE_LENGTH_RATIO,
        "examples": [{"prompt": p, "base": b, "student": s} for p, b, s in list(zip(prompts, base_answers, student_answers))[:3]],
    }


def general_prompts() -> list[str]:
    """The general instructions of the collapse check (unrelated to every preset task)."""
    from shared.tasks.presets import load_preset_prompts

    return load_preset_prompts("general.eval.txt")


def gate(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Whether a student may be promoted without `force`, and why (shown in the registry)."""
    gap = evaluation.get("student_minus_base") or {}
    collapse = evaluation.get("collapse") or {}
    if not gap:
        return {"promotable": False, "reason": "no evaluation figures"}
    interval = f"student − base {gap['value']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"
    if collapse.get("collapsed"):
        return {"promotable": False, "reason": f"answers to general instructions collapsed (perplexity ratio "
                                               f"{collapse['ppl_ratio']}, length ratio {collapse['length_ratio']}); {interval}"}
    if evaluation["prompts"] < MIN_PROMPTS_FOR_SIGNIFICANCE:
        return {"promotable": False, "reason": f"{evaluation['prompts']} evaluation prompts are too few to call a gain "
                                               f"significant (at least {MIN_PROMPTS_FOR_SIGNIFICANCE}); {interval}"}
    if not gap["low"] > 0:
        return {"promotable": False, "reason": f"no significant gain over the base: {interval} includes 0"}
    return {"promotable": True, "reason": f"significant gain: {interval}"}


def evaluate_student(
    *,
    task,
    reward: RewardModel,
    base: Engine,
    student: Engine,
    prompts: Sequence[str],
    samples: int,
    params: SamplingParams,
    teacher: Engine | None = None,
    scorer=None,
    general: Sequence[str] = (),
    examples: int = 4,
    on_phase=None,
    done_with: Callable[[Engine], None] | None = None,
) -> dict[str, Any]:
    """The whole evaluation: base, student (and teacher) on `prompts`, the collapse check on
    `general` (scored by `scorer`, a TransformersEngine of the base model), and the promotion gate.
    Each model answers everything it is asked (prompts and general) in one phase; `done_with(base)`
    then lets the caller free the base model's engine before the student's starts."""
    report = on_phase or (lambda phase: None)
    prompts = list(prompts)
    check = bool(general) and scorer is not None
    report("evaluating: base")
    systems = {"base": score(reward, prompts, sample_answers(base, prompts, samples, params))}
    base_general = [group[0] for group in sample_answers(base, general, 1, params)] if check else []
    if done_with is not None:
        done_with(base)
    report("evaluating: student")
    systems["student"] = score(reward, prompts, sample_answers(student, prompts, samples, params))
    student_general = [group[0] for group in sample_answers(student, general, 1, params)] if check else []
    if teacher is not None:
        report("evaluating: teacher")
        systems["teacher"] = score(reward, prompts, teacher_answers(teacher, task, reward, prompts, samples, params))
    result = compare(prompts, systems, seed=params.seed or 0, examples=examples)
    result["sampling"] = {"temperature": params.temperature, "max_tokens": params.max_tokens, "seed": params.seed}
    if check:
        report("evaluating: collapse check")
        result["collapse"] = collapse_check(scorer, general, base_general, student_general)
    result["gate"] = gate(result)
    return result


def figures_table(figures: dict[str, Any], title: str = "evaluation"):
    """A rich table of an evaluation's figures, for the CLI and the demo."""
    from rich.table import Table

    table = Table(title=f"{title}: {figures['prompts']} prompts × {figures['samples']} samples, 95% bootstrap intervals")
    for column in ("system", "mean reward", "95% CI"):
        table.add_column(column, justify="right")
    labels = {"base": "base model", "teacher": "teacher (critique→revise)", "student": "distilled student"}
    for name in ("base", "teacher", "student"):
        if name in figures["systems"]:
            est = figures["systems"][name]
            table.add_row(labels[name], f"{est['value']:+.3f}", f"[{est['low']:+.3f}, {est['high']:+.3f}]")
    gap, wins = figures["student_minus_base"], figures["win_rate"]
    table.add_section()
    table.add_row("student − base", f"{gap['value']:+.3f}", f"[{gap['low']:+.3f}, {gap['high']:+.3f}]")
    table.add_row("student wins (share of prompts)", f"{wins['value']:.0%}", f"[{wins['low']:.0%}, {wins['high']:.0%}]")
    share = figures.get("gain_share")
    if share and share.get("value") is not None and share.get("low") is not None:
        table.add_row("share of the teacher's gain", f"{share['value']:.0%}", f"[{share['low']:.0%}, {share['high']:.0%}]")
    collapse = figures.get("collapse")
    if collapse:
        table.add_section()
        table.add_row("general answers: perplexity ratio", f"{collapse['ppl_ratio']:.2f}",
                      "collapsed" if collapse["collapsed"] else f"ok (≤ {COLLAPSE_PPL_RATIO})")
    return table
