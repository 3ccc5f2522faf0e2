"""What a distillation run trains on and how, and how a student is evaluated: the API bodies of
POST /admin/distillations and POST /admin/evaluations, and the trainer's only input (stored on the
run row, so a retry or a resume trains exactly the same way).

The defaults are the recipe measured in docs/distillation.md: the best accepted answer of each
prompt above the task's reward floor, LoRA rank 16 (alpha 32) on the attention projections,
learning rate 1e-3, three epochs, batch 4, sequences of at most 256 tokens. On a 2-core CPU,
~200 sentiment pairs train in about 8 minutes.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.critique_revise import Acceptance
from shared.engines.base import SamplingParams
from shared.errors import InvalidRequest
from shared.keys import OWNER_PATTERN
from shared.settings import TruncatedAnswers
from shared.request_fields import TASK_NAME_PATTERN, Count, NonBlank, NonNegative, Real, Share, Whole, bounded_real

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class DistillationConfig(BaseModel):
    """A distillation run: which accepted pairs, which student base model, which training settings."""

    model_config = ConfigDict(extra="forbid")

    # --- which pairs (the training data) ---
    task: str = Field(
        pattern=TASK_NAME_PATTERN,
        description="Task whose accepted pairs are distilled; its reward scores the evaluation.",
    )
    jobs: list[str] | None = Field(
        None, min_length=1, max_length=1000,
        description="Only pairs of these sampling jobs (default: every job of the task).",
    )
    owners: list[Annotated[str, StringConstraints(pattern=OWNER_PATTERN)]] | None = Field(
        None, min_length=1, max_length=1000,
        description="Only pairs of jobs these keys created: key ids as jobs show them in `owner` (the first 16 hex digits "
        "of the key's SHA-256), 'none' for jobs of no key (dsc sample, a teacher without keys). Default: pairs of EVERY key "
        "that sampled the task, so each tenant's prompts shape the student all tenants are served.",
    )
    min_reward_gain: Real | None = Field(
        None,
        description="Only pairs whose reward rose by at least this much (reward_after - reward_before).",
    )
    acceptance: Acceptance | None = Field(None, description="Only pairs of chains sampled with this acceptance rule.")
    min_reward: Real | None = Field(
        None,
        description="Only pairs whose improved answer scored at least this (an absolute floor on reward_after); "
        "default: the task's train_min_reward, if it has one.",
    )
    max_repetition: Share | None = Field(
        0.2,
        description="Drop training answers whose share of repeated 3-grams is above this (looping answers teach a "
        "student to loop; the evaluation's degeneration check refuses such a student); null keeps them all.",
    )
    truncated_answers: TruncatedAnswers = Field(
        "drop",
        description="drop: leave out answers the teacher cut off at the job's max_tokens (trained on, they teach a student "
        "to end answers mid-sentence; measured on sentiment, its answers then repeat themselves more, "
        "docs/distillation.md); trim: cut such an answer back to its last finished sentence, dropping it when that "
        "would leave less than half of it (its reward stays the stored one of the whole answer; measured on sentiment, "
        "its students still repeat themselves more than drop's); keep: train on them as they are. SFT pairs only: "
        "preference pairs keep them (flagged). Pairs stored before truncation was recorded count as finished. "
        "Unset: the task's default (its `distillation`), else the deployment's distill.truncated_answers.",
    )
    best_per_prompt: bool = Field(
        True,
        description="Train on the best-scored accepted answer of each prompt only (of its chains), not on every accepted chain.",
    )
    max_pairs: Count | None = Field(None, description="Use at most this many pairs (the oldest first).")
    pair_id_max: NonNegative | None = Field(
        None,
        description="Only pairs stored up to this id; the service sets it at submission, so pairs added later never change the run.",
    )
    min_margin: bounded_real(ge=0) | None = Field(
        None,
        description="Preference objectives only: only preference pairs whose reward margin (chosen − rejected) is at least this.",
    )
    chain_id_max: NonNegative | None = Field(
        None,
        description="Preference objectives only: only chains stored up to this id; the service sets it at submission.",
    )

    # --- which student ---
    base_model: str | None = Field(
        None, min_length=1,
        description="Student base model (bundled name, local directory or hub id); default DSC_STUDENT_BASE_MODEL.",
    )
    name: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Registry name of the student; default '<task>-student'. Each run adds a version.",
    )

    # --- how to train ---
    method: Literal["lora", "full"] = Field(
        "lora",
        description="LoRA adapter (default) or full fine-tune of every weight.",
    )
    objective: Literal["sft", "dpo", "sft_dpo"] = Field(
        "sft",
        description="sft: fine-tune on the best accepted answers (default). dpo: direct preference optimisation on the "
        "chains' preference pairs (each draft against its revision, a prompt's best chain against its worst; as "
        "GET /v1/pairs/export?format=preference gives them), against the model it starts from. sft_dpo: sft, then dpo "
        "against the fine-tuned model. epochs / max_steps apply to each phase. A preference objective's student is not "
        "auto-promoted: on the sentiment task DPO over-optimised the reward while the gate passed (docs/distillation.md). "
        "Unset: the task's default (its `distillation`; the safety preset's is dpo), else sft.",
    )
    dpo_beta: Real = Field(
        0.1, gt=0, le=10,
        description="DPO's β: how far the student may move from its reference (smaller: further).",
    )
    lora_r: Whole = Field(16, ge=1, le=256, description="LoRA rank.")
    lora_alpha: Real = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: Real = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[NonBlank] = Field(
        list(DEFAULT_LORA_TARGETS), min_length=1,
        description="Module names LoRA adapts (must exist in the base model).",
    )
    learning_rate: Real = Field(
        1e-3, gt=0, le=1e-1,
        description="Peak learning rate (AdamW), reached after warmup, then linear decay to 0.",
    )
    warmup_ratio: Real = Field(
        0.05, ge=0, le=0.5,
        description="Share of the steps spent warming the learning rate up.",
    )
    weight_decay: Real = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    epochs: Real = Field(
        3.0, gt=0, le=100,
        description="Passes over the training pairs (ignored when max_steps is set).",
    )
    max_steps: Count | None = Field(None, description="Optimizer steps to run; overrides epochs.")
    batch_size: Whole = Field(4, ge=1, le=256, description="Pairs per optimizer step.")
    max_seq_len: Whole = Field(
        256, ge=16, le=32768,
        description="Longest prompt+answer in tokens; longer answers are cut, pairs whose prompt alone does not fit are skipped.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Base weights' dtype while training (LoRA weights are float32 either way). auto: bfloat16 on a "
        "GPU that computes it, float32 on the CPU, where a bf16 backward pass measured 6-20x slower here.")
    seed: Whole = Field(0, ge=0, le=2**31 - 1, description="Seeds the held-out split, the data order, LoRA init and evaluation sampling "
                      "(the evaluation's bound, so a run never trains to the end and then fails on it).")
    save_steps: Whole = Field(
        10, ge=1,
        description="Checkpoint every this many steps (a killed run resumes from the last one).",
    )

    # --- evaluation ---
    eval_prompts: list[NonBlank] | None = Field(
        None, min_length=1, max_length=1000,
        description="Evaluate on these prompts (default: the task's evaluation set; pairs of them never train).",
    )
    held_out_fraction: Real = Field(
        0.1, ge=0, le=0.5,
        description="Only for a task without an evaluation set and no eval_prompts: share of distinct pair prompts "
        "kept out of training to evaluate on.",
    )
    max_eval_prompts: Whole = Field(48, ge=1, le=1000, description="Evaluate on at most this many prompts.")
    eval_samples: Whole = Field(4, ge=1, le=32, description="Answers per prompt and system (K); the intervals need K > 1 to be honest.")
    eval_max_tokens: Whole = Field(96, ge=1, le=1024, description="Answer length for every system alike.")
    eval_temperature: Real = Field(
        0.7, ge=0, le=2,
        description="Sampling temperature for every system alike (0: greedy).",
    )
    eval_teacher: bool = Field(
        False,
        description="Also run the teacher's critique→revise chain on the evaluation prompts (three generations per answer: "
        "slow on a CPU), to report the share of the teacher's gain the student kept.",
    )
    collapse_check: bool = Field(True, description="Check the student's answers to general instructions (perplexity, length).")
    eval_examples: Whole = Field(4, ge=0, le=100, description="Before/after examples kept in the metrics.")
    auto_promote: bool = Field(
        False,
        description="Promote the new student when its promotion gate passes (a significant gain over the base; no collapse "
        "or degeneration; no significant loss on the second opinion or against the task's active student, which must "
        "still be the one it was measured against); otherwise it is registered only, and promoting it needs force.",
    )

    # --- artifacts ---
    merge: bool = Field(
        False,
        description="Also save merged weights (base + adapter): what the student service serves fastest.",
    )

    @model_validator(mode="after")
    def _check(self) -> "DistillationConfig":
        return self

    @property
    def student_name(self) -> str:
        return self.name or f"{self.task}-student"

    @property
    def fine_tunes(self) -> bool:
        """Whether the run has a supervised phase (on the accepted answers)."""
        return self.objective in ("sft", "sft_dpo")

    @property
    def prefers(self) -> bool:
        """Whether the run has a preference phase (on the chains' preference pairs)."""
        return self.objective in ("dpo", "sft_dpo")

    def phase_steps(self, n_examples: int, n_preferences: int = 0) -> tuple[int, int]:
        """Optimizer steps of the supervised phase over `n_examples` answers and of the preference
        phase over `n_preferences` pairs (0 for a phase the objective does not have)."""
        def steps(n: int) -> int:
            return self.max_steps if self.max_steps is not None else max(1, math.ceil(self.epochs * steps_per_epoch(n, self.batch_size)))

        return (steps(n_examples) if self.fine_tunes else 0), (steps(n_preferences) if self.prefers else 0)

    def total_steps(self, n_examples: int, n_preferences: int = 0) -> int:
        """Optimizer steps of a whole run."""
        return sum(self.phase_steps(n_examples, n_preferences))

    def evaluation(self) -> "EvaluationConfig":
        """The evaluation this run ends with (the same one POST /admin/evaluations runs on demand)."""
        return EvaluationConfig(
            task=self.task, eval_prompts=self.eval_prompts, max_eval_prompts=self.max_eval_prompts, samples=self.eval_samples,
            max_tokens=self.eval_max_tokens, temperature=self.eval_temperature, seed=self.seed, teacher=self.eval_teacher,
            collapse_check=self.collapse_check, examples=self.eval_examples,
        )


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


class EvaluationConfig(BaseModel):
    """How to evaluate: which prompts, how many samples, which systems. The API body of
    POST /admin/evaluations, and what a distillation's own evaluation is built from."""

    model_config = ConfigDict(extra="forbid")

    student_id: str | None = Field(None, min_length=1, max_length=32, description="Registered student to evaluate.")
    task: str | None = Field(None, pattern=TASK_NAME_PATTERN, description="Task whose reward scores (default: the student's).")
    eval_prompts: list[NonBlank] | None = Field(
        None, min_length=1, max_length=1000, description="Prompts to evaluate on (default: the task's evaluation set).")
    max_eval_prompts: Whole = Field(48, ge=1, le=1000, description="Evaluate on at most this many prompts.")
    samples: Whole = Field(4, ge=1, le=32, description="Answers per prompt and system (K).")
    max_tokens: Whole = Field(96, ge=1, le=1024, description="Answer length for every system alike.")
    temperature: Real = Field(0.7, ge=0, le=2, description="Sampling temperature for every system alike.")
    seed: Whole = Field(0, ge=0, le=2**31 - 1, description="Seeds the sampling and the bootstrap.")
    teacher: bool = Field(False, description="Also run the teacher's critique→revise chain (three generations per answer).")
    collapse_check: bool = Field(True, description="Base-model perplexity of the student's answers to general instructions.")
    examples: Whole = Field(4, ge=0, le=100, description="Answers kept in the figures, side by side.")

    @model_validator(mode="after")
    def _check(self) -> "EvaluationConfig":
        return self

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed)

    def prompts_for(self, task_name: str, task_eval_prompts: Sequence[str]) -> list[str]:
        """The prompts it evaluates on: its own, else the task's evaluation set (400 where neither has any)."""
        prompts = list(dict.fromkeys(self.eval_prompts or task_eval_prompts))
        if not prompts:
            raise InvalidRequest(f"task {task_name!r} has no evaluation set: give eval_prompts", param="eval_prompts")
        return prompts[: self.max_eval_prompts]


class EvaluationRequest(EvaluationConfig):
    """The body of POST /admin/evaluations: an evaluation of one registered student."""

    student_id: str = Field(min_length=1, max_length=32, description="Registered student to evaluate.")
