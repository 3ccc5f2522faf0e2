"""Submitting, listing and showing distillation runs: what POST/GET /admin/distillations do, without HTTP.

Submission checks what can be checked without the student's model, so a bad request is a clear
4xx and no run is queued: the task exists, the limits hold, the base model reference names a model
(`check_reference`: nothing is converted or downloaded), enough pairs match the filter and survive
the selection, and something is left to evaluate on. What needs the model itself (LoRA targets,
max_seq_len against its positions and against the tokenised pairs) is checked by the trainer before
it loads any weights (services/trainer/preflight.py): such a run fails at once, with the reason as
its error. The run stores its config with the base model and the newest pair and chain ids filled
in, so what it trains on is fixed at submission.
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import ChainRecord, DistillationRun, Pair, Student
from shared.db.queue import cancel_and_read, get_row, newest_rows
from shared.db.idempotency import create_once, earlier, fingerprint, scoped_key
from shared.distillation.config import DistillationConfig
from shared.distillation.lineage import run_lineage
from shared.distillation.pairs import Example, pair_query, plan_data, require_training_pairs
from shared.distillation.preferences import run_preferences
from shared.errors import InvalidRequest, Overloaded
from shared.model_store import check_reference
from shared.settings import Settings
from shared.tasks import TaskSpec, get_task


SNAPSHOT_FILE = "snapshot.jsonl"  # in a run's directory: one training example (Example.to_json) a line, written once
PREFERENCES_FILE = "preferences.jsonl"  # beside it, for a preference objective: one Preference.to_json a line


def run_dir(settings: Settings, run_id: str) -> Path:
    """Where a run's snapshot, checkpoints and artifacts live: the model store's students/ folder."""
    return settings.resolved_model_store / "students" / run_id


def training_prompts(settings: Settings, run_id: str) -> set[str]:
    """The prompts a run trained on, from its frozen snapshot (none before it took one)."""
    prompts: set[str] = set()
    for name in (SNAPSHOT_FILE, PREFERENCES_FILE):
        path = run_dir(settings, run_id) / name
        if path.is_file():
            prompts |= {json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    return prompts


def deployment_defaults(settings: Settings) -> dict[str, Any]:
    """The recipe fields whose default the deployment sets (after a task's own)."""
    return {"truncated_answers": settings.distill.truncated_answers}


def with_defaults(config: DistillationConfig, task: TaskSpec, settings: Settings) -> DistillationConfig:
    """The config a run stores: what it left unset takes the task's recipe default, then the
    deployment's (deployment_defaults, base model)."""
    defaults = {**deployment_defaults(settings), **task.distillation}
    unset = {key: value for key, value in defaults.items() if key not in config.model_fields_set}
    return DistillationConfig.model_validate({**config.model_dump(exclude_unset=True), **unset,
                                              "base_model": config.base_model or settings.student_base_model})


def plan_run(session: Session, settings: Settings, config: DistillationConfig) -> tuple[DistillationConfig, dict[str, Any], dict[str, Any]]:
    """Validate a submission; return the config to store, the initial progress and the run's lineage."""
    task = get_task(session, config.task)  # 404 for an unknown task
    config = with_defaults(config, task, settings)
    if config.max_steps is not None and config.max_steps > settings.distill.max_steps:
        raise InvalidRequest(f"max_steps {config.max_steps} exceeds the limit of {settings.distill.max_steps} (distill_max_steps)", param="max_steps")
    if config.method == "lora" and config.lora_r > settings.student.max_lora_rank:
        raise InvalidRequest(
            f"lora_r {config.lora_r} exceeds the rank the student service serves ({settings.student.max_lora_rank}, student_max_lora_rank)",
            param="lora_r",
        )
    if config.prefers and config.auto_promote:
        # Measured (docs/distillation.md): DPO on these pairs over-optimised the reward while the gate still passed.
        whose = f" (task {task.name!r}'s default; name objective sft to auto-promote)" if "objective" in task.distillation else ""
        raise InvalidRequest(f"objective {config.objective!r}{whose} is not auto-promoted: read the student's answers, then "
                             "promote it with POST /admin/students/{id}/promote", param="auto_promote")
    if config.eval_prompts is None and not task.eval_prompts and config.held_out_fraction == 0:
        raise InvalidRequest(f"nothing to evaluate on: task {task.name!r} has no evaluation set; give eval_prompts or a "
                             "held_out_fraction above 0", param="held_out_fraction")
    try:
        check_reference(config.base_model)
    except InvalidRequest as error:
        raise InvalidRequest(f"base_model: {error.message}", param="base_model") from None

    newest = {"pair_id_max": session.scalar(select(func.max(Pair.id))) or 0, "chain_id_max": session.scalar(select(func.max(ChainRecord.id))) or 0}
    config = config.model_copy(update={name: value for name, value in newest.items() if getattr(config, name) is None})
    rows = session.execute(
        pair_query(config).with_only_columns(Pair.id, Pair.prompt, Pair.response, Pair.reward_before, Pair.reward_after, Pair.truncated,
                                             Pair.job_id)
    ).all()
    where = f"task {task.name!r}" + (f", jobs {config.jobs}" if config.jobs else "") + (
        f", owners {config.owners}" if config.owners else "") + (
        f", min_reward_gain {config.min_reward_gain}" if config.min_reward_gain is not None else "") + (
        f", acceptance {config.acceptance!r}" if config.acceptance else "")
    if config.fine_tunes and len(rows) < settings.distill.min_pairs:
        raise InvalidRequest(
            f"too few pairs: {len(rows)} accepted pairs match ({where}); a distillation needs at least {settings.distill.min_pairs} "
            "(distill_min_pairs). Sample more with POST /v1/jobs.",
            param="task",
        )
    examples = [Example.of_pair(row) for row in rows]
    train, eval_prompts = plan_data(examples, config, task)
    if not eval_prompts:
        raise InvalidRequest("no held-out prompt left to evaluate on; raise held_out_fraction or give eval_prompts", param="held_out_fraction")
    preferences = 0
    if config.fine_tunes:
        require_training_pairs(len(train), len(rows), len(eval_prompts), config, task, settings.distill.min_pairs)
    if config.prefers:
        preferences = len(run_preferences(session, config, task, examples))
        if preferences < settings.distill.min_pairs:
            raise InvalidRequest(
                f"too few preference pairs: {preferences} of the chains of {where} (without evaluation prompts, ties, "
                f"pairs below min_margin and looping chosen answers); objective {config.objective!r} needs at least "
                f"{settings.distill.min_pairs} (distill_min_pairs)", param="objective")
    # `total` counts every selected pair; the trainer corrects it once it knows how many fit max_seq_len.
    progress = {"phase": "queued", "step": 0, "total": config.total_steps(len(train), preferences), "loss": None,
                "pairs": len(train), "preferences": preferences, "eval_prompts": len(eval_prompts)}
    return config, progress, run_lineage(session, (row.job_id for row in rows))


def submit(sessions: sessionmaker[Session], settings: Settings, config: DistillationConfig, *,
           idempotency_key: str | None = None) -> tuple[DistillationRun, bool]:
    """Queue a run; returns (run, replayed): a request with the Idempotency-Key of an earlier one
    gets that one's run, whatever the queue holds now."""
    key, digest = scoped_key(None, idempotency_key), fingerprint(config.model_dump(mode="json"))
    with sessions() as session:
        if key is not None and (run := earlier(session, DistillationRun, key, digest)) is not None:
            return run, True
        queued = session.scalar(select(func.count()).select_from(DistillationRun).where(DistillationRun.status == "queued")) or 0
        if queued >= settings.distill.max_queued:
            raise Overloaded(f"{queued} distillation runs are queued already (distill_max_queued); retry later",
                             retry_after=settings.distill.queue_full_retry_after_seconds)
        stored, progress, lineage = plan_run(session, settings, config)

    def queue(session: Session) -> DistillationRun:
        run = DistillationRun(task_name=stored.task, status="queued", config=stored.model_dump(mode="json"), progress=progress, metrics={},
                              lineage=lineage)
        session.add(run)
        session.flush()
        run.artifact_dir = str(run_dir(settings, run.id))
        return run

    return create_once(sessions, DistillationRun, key, digest, queue)


def get_run(session: Session, run_id: str) -> DistillationRun:
    return get_row(session, DistillationRun, run_id, "distillation run")


def list_runs(session: Session, *, status: str | None = None, task: str | None = None, limit: int = 50) -> list[DistillationRun]:
    """The newest runs first."""
    return newest_rows(session, DistillationRun, limit, status=status, task_name=task)


def cancel(sessions: sessionmaker[Session], run_id: str) -> DistillationRun:
    """A queued run is cancelled at once; a running one stops after its current step."""
    return cancel_and_read(sessions, DistillationRun, run_id, "distillation run")


def student_ids(session: Session, run_ids: list[str]) -> dict[str, str]:
    """run id -> the id of the student it registered, for the runs that registered one."""
    if not run_ids:
        return {}
    return dict(session.execute(select(Student.run_id, Student.id).where(Student.run_id.in_(run_ids))).all())


def run_views(session: Session, runs: list[DistillationRun]) -> list[dict[str, Any]]:
    """The API views of `runs`, each with the student it registered."""
    students = student_ids(session, [run.id for run in runs])
    return [run_view(run, students.get(run.id)) for run in runs]


def run_view(run: DistillationRun, student_id: str | None = None) -> dict[str, Any]:
    report = Path(run.artifact_dir) / "report.png" if run.artifact_dir else None
    return {
        "id": run.id,
        "task": run.task_name,
        "status": run.status,
        "cancel_requested": run.cancel_requested,
        "progress": run.progress,
        "metrics": run.metrics,
        "error": run.error,
        "config": run.config,
        "lineage": run.lineage,
        "attempt": run.attempt,
        "artifact_dir": run.artifact_dir,
        "report_url": f"/admin/distillations/{run.id}/report.png" if report and report.is_file() else None,
        "student_id": student_id,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
