"""The trainer worker (`dsc trainer work`): claims queued distillation runs and carries each one
from stored pairs to an evaluated, registered student.

    claim        shared.db.queue (SKIP LOCKED on Postgres, BEGIN IMMEDIATE on SQLite), lease + heartbeat
    snapshot     the run's pairs, written once to its artifact directory (reproducible, resumable)
    preflight    the checks that need the student's model and tokenizer (preflight.py): a run that cannot
                 work fails here, before any weights load, with the reason as its error
    train        training.train on trainer.device, in trainer.processes data-parallel ranks (parallel.py):
                 checkpoints every save_steps; progress {step, total, loss} after each step, and a
                 preference run's passes over every pair (reference log-probs, preference figures) in passes
    evaluate     base vs student vs the task's active student (K samples per prompt, bootstrap CIs) on the
                 evaluation prompts, on the reward and the second opinion; degeneration and collapse checks
    report       metrics.json and report.png beside the adapter
    register     the Student row and the run's final status, in ONE fenced transaction (promoted too with
                 auto_promote, when the promotion gate and the incumbent check let it); the registry is
                 shared/distillation/registry.py

A worker killed mid-run leaves a checkpoint behind; its lease expires and the next claim (this
worker restarted, or another one) resumes from the newest checkpoint. Every claim counts an
attempt; after `trainer.max_attempts` claims the run fails with the reason instead of resuming
forever, so a run never stays `running` once workers are back. Anything that raises fails the run
with its message. Cancellation is checked after every step and after every batch of a preference
pass. A failed or cancelled run registers nothing, so the active student is never touched by one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.trainer.data import take_snapshot
from services.trainer.distill import Interrupted, write_json
from services.trainer.training import train
from services.trainer.evaluation_engines import incumbent_weights, run_evaluation
from services.trainer.preflight import preflight
from services.trainer.report import write_report
from shared.db.models import DistillationRun, EvaluationRun, Student, utcnow
from shared.db.outages import OutageLog, first_line, is_outage, work_loop
from shared.db.queue import Heartbeat, Lease, LeaseLost, claim, fenced_update, finish, release, worker_owner
from shared.device import check_processes, resolve_device
from shared.distillation.config import DistillationConfig, EvaluationConfig
from shared.distillation.registry import StudentWeights, auto_promote, record_evaluation, register_student
from shared.distillation.runs import run_dir
from shared.errors import DscError, InvalidRequest
from shared.logs import configure_logging, log_ids
from shared.model_store import resolve_model
from shared.rewards import public_reward
from shared.settings import Settings
from shared.tasks import get_task

log = logging.getLogger(__name__)


class TrainerWorker:
    """Claims and runs distillation runs one at a time. `run_once` processes at most one run."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], name: str = "trainer") -> None:
        self.settings = settings
        self.sessions = sessions
        self.owner = worker_owner(name)
        self.stopping = threading.Event()
        self.outage = OutageLog(log, "trainer worker", settings.trainer.poll_seconds)
        self._thread: threading.Thread | None = None

    # --- loop ----------------------------------------------------------------------------------

    def start(self) -> "TrainerWorker":
        self._thread = threading.Thread(target=self.loop, name="trainer-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def loop(self, *, once: bool = False) -> None:
        work_loop(self.run_once, stopping=self.stopping, poll_seconds=self.settings.trainer.poll_seconds, outage=self.outage, once=once)

    # --- one run -------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and process one distillation run, else one evaluation; False when both queues are empty."""
        for model, process in ((DistillationRun, self._process), (EvaluationRun, self._process_evaluation)):
            run = claim(self.sessions, model, self.owner, self.settings.trainer.lease_seconds)
            if run is not None:
                with log_ids(**{"distillation_id" if model is DistillationRun else "evaluation_id": run.id}):
                    self._run_claimed(model, run, process)
                return True
        return False

    def _run_claimed(self, model: type, run, process) -> None:
        kind = "distillation" if model is DistillationRun else "evaluation"
        lease = Lease(run.id, self.owner, run.attempt)
        log.info("claimed %s %s (attempt %d)", kind, run.id, run.attempt)
        if run.attempt > self.settings.trainer.max_attempts:
            last = run.progress.get("step", 0) if isinstance(run.progress, dict) else 0
            finish(self.sessions, model, run.id, self.owner, run.attempt, "failed",
                   error=f"gave up after {run.attempt - 1} attempts (trainer_max_attempts): each worker stopped without "
                         f"finishing (killed or crashed; last progress step {last}); see the trainer log")
            return
        with Heartbeat(self.sessions, model, lease.row_id, lease.owner, lease.attempt, self.settings.trainer.lease_seconds) as beat:
            try:
                process(run, lease, beat)
            except LeaseLost:
                log.warning("%s %s: lease lost; leaving it to the worker that holds it now", kind, run.id)
            except Interrupted as stop:
                self._interrupted(model, run, lease, stop)
            except Exception as error:
                if is_outage(error):  # not the run's fault: its lease runs out and the next claim resumes it from its checkpoint
                    log.warning("%s %s: the database went away before the run could be committed (%s); it will be resumed",
                                kind, run.id, first_line(error))
                    raise
                message = failure_message(error)
                log.warning("%s %s failed: %s", kind, run.id, message, exc_info=not isinstance(error, DscError))
                finish(self.sessions, model, run.id, self.owner, lease.attempt, "failed",
                       error=message, progress={**self._progress(model, run.id), "phase": "failed"})

    def _interrupted(self, model: type, run, lease: Lease, stop: Interrupted) -> None:
        if stop.reason == "cancelled":
            finish(self.sessions, model, run.id, self.owner, lease.attempt, "cancelled",
                   progress={**self._progress(model, run.id), "phase": "cancelled"})
            log.info("%s cancelled at step %d", run.id, stop.step)
        elif stop.reason == "stopping":
            release(self.sessions, model, run.id, self.owner, lease.attempt)  # resumed (from its checkpoint) by the next claim
            log.info("%s handed back at step %d (worker stopping)", run.id, stop.step)
        # "lease lost": someone else holds it now; write nothing

    def _progress(self, model: type, run_id: str) -> dict:
        with self.sessions() as session:
            return dict(session.scalar(select(model.progress).where(model.id == run_id)) or {})

    def _update(self, lease: Lease, model: type = DistillationRun, **values) -> None:
        with self.sessions() as session, session.begin():
            if not fenced_update(session, model, lease.row_id, lease.owner, lease.attempt, **values):
                raise LeaseLost()

    def _report(self, lease: Lease, model: type = DistillationRun, **values) -> None:
        """A progress write: skipped while the database is away (the next one says the same)."""
        self.outage.advisory(lambda: self._update(lease, model, **values), None)

    def _control(self, lease: Lease, beat: Heartbeat, model: type = DistillationRun) -> str | None:
        if beat.lost.is_set():
            return "lease lost"
        if self.stopping.is_set():
            return "stopping"

        def cancel_requested() -> bool:
            with self.sessions() as session:
                return bool(session.scalar(select(model.cancel_requested).where(model.id == lease.row_id)))

        # A cancel check the database cannot answer now is asked again at the next step.
        return "cancelled" if self.outage.advisory(cancel_requested, False) else None

    def _process_evaluation(self, run: EvaluationRun, lease: Lease, beat: Heartbeat) -> None:
        config = EvaluationConfig.model_validate(run.config)
        with self.sessions() as session:
            student = session.get(Student, run.student_id) if run.student_id else None
            if student is None:
                raise InvalidRequest("the evaluated student no longer exists")
            task = get_task(session, run.task_name)
        progress = {"phase": "evaluating"}

        def on_phase(phase: str) -> None:
            if (stop := self._control(lease, beat, EvaluationRun)) is not None:
                raise Interrupted(stop, 0)
            progress.update(phase=phase)
            self._report(lease, EvaluationRun, progress=progress)

        on_phase("evaluating")
        base_path = resolve_model(student.base_model, self.settings.resolved_model_store)
        figures = run_evaluation(self.settings, config, task, base_path=base_path,
                                 adapter_dir=Path(student.adapter_path) if student.adapter_path else None,
                                 merged_dir=Path(student.merged_path) if student.merged_path else None,
                                 incumbent=self._incumbent(task.name, excluding=student.id), on_phase=on_phase)
        with self.sessions() as session, session.begin():
            if not fenced_update(session, EvaluationRun, lease.row_id, lease.owner, lease.attempt, status="succeeded", metrics=figures,
                                 progress={"phase": "succeeded"}, lease_owner=None, lease_expires_at=None, finished_at=utcnow(), error=None):
                raise LeaseLost()
            record_evaluation(session, run, figures)
        log.info("evaluation %s succeeded: %s", run.id, figures["gate"]["reason"])

    def _process(self, run: DistillationRun, lease: Lease, beat: Heartbeat) -> None:
        settings = self.settings
        if settings.trainer.threads:
            import torch

            torch.set_num_threads(settings.trainer.threads)
        config = DistillationConfig.model_validate(run.config)
        directory = Path(run.artifact_dir) if run.artifact_dir else run_dir(settings, run.id)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "distillation.json", {"run_id": run.id, "config": run.config})
        with self.sessions() as session:
            task = get_task(session, config.task)
            snapshot = take_snapshot(session, config, task, directory)
        base_path = resolve_model(config.base_model, settings.resolved_model_store)
        preflight(config, task, base_path, snapshot, min_pairs=settings.distill.min_pairs)
        progress = dict(run.progress or {})
        progress.update(phase="training", pairs=len(snapshot.train), preferences=len(snapshot.preferences),
                        eval_prompts=len(snapshot.eval_prompts), data_sha256=snapshot.digest,
                        device=resolve_device(settings.trainer.device), processes=settings.trainer.processes)
        self._update(lease, progress=progress, artifact_dir=str(directory))

        last_write = [0.0]

        def report(last: bool) -> None:
            now = time.monotonic()
            if now - last_write[0] >= 0.5 or last:  # at most two progress writes a second
                last_write[0] = now
                self._report(lease, progress=progress)

        def on_step(step: int, total: int, loss: float) -> str | None:
            progress.update(phase="training", step=step, total=total, loss=round(loss, 4))
            report(step == total)
            return self._control(lease, beat)

        def on_pass(name: str, done: int, total: int) -> str | None:
            # A preference pass over every pair, between steps: pairs done of total, kept once done.
            progress.setdefault("passes", {})[name] = {"done": done, "total": total}
            progress.update(phase=name)
            report(done in (0, total))
            return self._control(lease, beat)

        result = train(config, base_path, snapshot.train, directory, on_step=on_step, device=settings.trainer.device,
                       processes=settings.trainer.processes, threads=settings.trainer.threads,
                       keep_checkpoints=settings.trainer.keep_checkpoints, preferences=snapshot.preferences, on_pass=on_pass)
        if result.resumed_from is not None:
            progress["resumed_from_step"] = result.resumed_from
        progress.update(phase="evaluating")
        self._report(lease, progress=progress)
        if (stop := self._control(lease, beat)) is not None:
            raise Interrupted(stop, result.steps)

        evaluation = self._evaluate(config, task, base_path, result, snapshot.eval_prompts, lease, progress)
        curve = result.losses if len(result.losses) <= 400 else result.losses[:: max(1, len(result.losses) // 400)]
        metrics = {
            "train": {
                "pairs": len(snapshot.train), "examples": result.train_examples, "skipped_too_long": result.skipped_examples,
                "steps": result.steps, "first_loss": result.losses[0][1] if result.losses else None,
                "final_loss": result.losses[-1][1] if result.losses else None,
                "final_loss_mean10": round(sum(v for _, v in result.losses[-10:]) / max(1, len(result.losses[-10:])), 4),
                "resumed_from_step": result.resumed_from, "seconds_this_attempt": round(result.seconds, 1),
                "data_sha256": snapshot.digest, "loss_curve": curve,
                "device": result.device, "dtype": result.dtype, "processes": result.processes,
                "objective": config.objective, "preference": result.preference,
            },
            "eval": evaluation,
            "reward": public_reward(task.reward),  # shown by the admin API and stored with the student: no secrets
        }
        if result.data_parallel is not None:  # what each rank trained on (per-example counts stay out of the database)
            parallel = result.data_parallel
            metrics["train"]["data_parallel"] = {key: value for key, value in parallel.items() if key != "seen_per_rank"}
        write_json(directory / "metrics.json", metrics)
        per_prompt = evaluation["per_prompt"]
        write_report(
            directory / "report.png",
            title=f"distillation {run.id[:8]} · task {task.name} · {config.student_name}",
            losses=result.losses,
            base_rewards=[row["base"] for row in per_prompt],
            student_rewards=[row["student"] for row in per_prompt],
            teacher_rewards=[row["teacher"] for row in per_prompt if "teacher" in row],
        )
        if (stop := self._control(lease, beat)) is not None:
            raise Interrupted(stop, result.steps)
        with self.sessions() as session, session.begin():
            final = {**progress, "phase": "succeeded"}
            if not fenced_update(session, DistillationRun, lease.row_id, lease.owner, lease.attempt, status="succeeded", metrics=metrics,
                                 progress=final, lease_owner=None, lease_expires_at=None, finished_at=utcnow(), error=None):
                raise LeaseLost()
            student = register_student(session, run, name=config.student_name, base_model=config.base_model,
                                       adapter_dir=result.adapter_dir, merged_dir=result.merged_dir,
                                       metrics=student_metrics(evaluation, metrics["train"]))
            if config.auto_promote:
                auto_promote(session, student)
        log.info("run %s succeeded: student %s v%d (%s)", run.id, student.name, student.version, student.id)

    def _evaluate(self, config: DistillationConfig, task, base_path: Path, result, prompts: list[str], lease: Lease, progress: dict) -> dict:
        def on_phase(phase: str) -> None:
            progress.update(phase=phase)
            self._report(lease, progress=progress)

        try:
            return run_evaluation(self.settings, config.evaluation(), task, base_path=base_path, adapter_dir=result.adapter_dir,
                                  merged_dir=result.merged_dir, incumbent=self._incumbent(task.name), prompts=prompts, on_phase=on_phase)
        except (Interrupted, LeaseLost):
            raise
        except Exception as error:
            if is_outage(error):
                raise
            # The training is done and saved: a failed evaluation (an engine without memory, a reward
            # that would not load) must not throw it away. The student is registered without figures,
            # not promotable, and POST /admin/evaluations can measure it later.
            message = failure_message(error)
            log.warning("evaluation of the trained student failed: %s", message, exc_info=not isinstance(error, DscError))
            return failed_evaluation(message, config.eval_samples)

    def _incumbent(self, task_name: str, excluding: str | None = None) -> StudentWeights | None:
        """The task's active student, waiting out a database outage: a run that trained through one
        must not lose its attempt to the read that starts its evaluation."""
        def read() -> StudentWeights | None:
            with self.sessions() as session:
                return incumbent_weights(session, task_name, self.settings.resolved_model_store, excluding=excluding)

        return self.outage.waiting(read, self.stopping)


def failure_message(error: BaseException) -> str:
    """What a run or an evaluation failed of, as stored and shown: a DscError's own message, else the exception."""
    return getattr(error, "message", None) or f"{type(error).__name__}: {error}"


def failed_evaluation(message: str, samples: int) -> dict:
    """The figures of an evaluation that could not run: its error, the K a later evaluation must
    match to set the gate (registry.gate_refusal), and a gate that refuses until one does."""
    return {"error": message, "samples": samples, "per_prompt": [], "examples": [],
            "gate": {"promotable": False, "reason": f"its evaluation failed ({message}); evaluate it again "
                     "(POST /admin/evaluations or dsc eval) before promoting it"}}


def student_metrics(evaluation: dict, train: dict) -> dict:
    """What the registry keeps with a student: the evaluation's figures (no answers), the gate, the loss."""
    kept = {key: value for key, value in evaluation.items() if key not in ("examples", "per_prompt")}
    if "collapse" in kept:
        kept["collapse"] = {key: value for key, value in kept["collapse"].items() if key != "examples"}
    return {"eval": kept, "gate": evaluation["gate"], "final_loss": train["final_loss"], "steps": train["steps"]}


def work(settings: Settings, *, once: bool = False) -> None:
    """Run a trainer worker in this process until SIGINT/SIGTERM (or, with once, until the queue is
    empty); logs on stderr (shared.logs)."""
    from shared.db.session import make_engine, session_factory, upgrade

    configure_logging(settings)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(settings.trainer.device)  # a device that is not there fails now, not with every run
    check_processes(settings.trainer.processes, device)
    engine = make_engine(settings.resolved_database_url)  # creates the SQLite file's folder
    upgrade(settings.resolved_database_url)
    worker = TrainerWorker(settings, session_factory(engine))

    def _stop(signum, _frame) -> None:
        log.info("signal %d: finishing the current step, then handing the run back", signum)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("trainer worker %s polling %s (training on %s, %d process%s)", worker.owner, settings.resolved_database_url.split("@")[-1],
             device, settings.trainer.processes, "" if settings.trainer.processes == 1 else "es")
    try:
        worker.loop(once=once)
    finally:
        engine.dispose()

