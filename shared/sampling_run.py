"""From a sample request to stored chains: resolve the task, run the sampler, write the results.

Used by the CLI (`dsc sample`), the teacher's synchronous endpoint and its job workers, so all
three validate, sample and store the same way. The algorithm itself is `shared.critique_revise`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job, Student, utcnow
from shared.db.session import transaction
from shared.db.store import Recorded, record_chains
from shared.engines.base import Engine, SamplingParams
from shared.errors import InvalidRequest, NotFound
from shared.rewards import NetworkPolicy, RewardModel, build_reward
from shared.settings import Settings
from shared.critique_revise import Acceptance, Chain, ProgressCallback, Sampler, Schedule, validate_run
from shared.sampling_protocol import SampleRequest
from shared.tasks import TaskSpec, get_task


@dataclass(frozen=True)
class SamplePlan:
    """A validated request: everything needed to sample, nothing left to default."""

    task: TaskSpec
    prompts: list[str]
    steps: int
    chains: int
    acceptance: Acceptance
    beta: float
    params: SamplingParams
    student: str | None = None  # a registered student's id: it samples instead of the teacher's model (a later round)

    def job_params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "chains": self.chains,
            "acceptance": self.acceptance,
            "beta": self.beta,
            "temperature": self.params.temperature,
            "top_p": self.params.top_p,
            "max_tokens": self.params.max_tokens,
            "seed": self.params.seed,
            **({"student": self.student} if self.student is not None else {}),
        }


def plan_sample(session: Session, request: SampleRequest) -> SamplePlan:
    """Resolve task defaults and validate; raises a DscError before anything runs or is written."""
    task = get_task(session, request.task)
    prompts = request.prompts if request.prompts is not None else list(task.prompts)
    if request.prompts is None and not prompts:
        raise InvalidRequest(f"task {task.name!r} has no prompt set: pass prompts", param="prompts")
    if request.limit is not None:
        prompts = prompts[: request.limit]
    plan = SamplePlan(
        task=task,
        prompts=prompts,
        steps=request.steps or task.steps,
        chains=request.chains,
        acceptance=request.acceptance or task.acceptance,
        beta=request.beta or task.beta,
        params=SamplingParams(temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens, seed=request.seed),
        student=request.student,
    )
    if plan.student is not None:
        check_sampling_student(session, plan.student, task.name)
    validate_run(plan.prompts, steps=plan.steps, chains=plan.chains, acceptance=plan.acceptance, beta=plan.beta)
    return plan


def check_student_engine(plan: SamplePlan, settings: Settings) -> None:
    """A plan naming a student needs an engine that runs local weights: a remote (openai) one cannot."""
    if plan.student is not None and settings.engine == "openai":
        raise InvalidRequest("the teacher's engine is a remote server (engine=openai): it cannot run a registered "
                             "student's weights", param="student")


def student_model_dir(session: Session, student_id: str, store: Path) -> Path:
    """Plain weights of the registered student a plan samples from (merged into `store` once where needed)."""
    from shared.distillation.registry import weights_of

    return weights_of(_student(session, student_id), store).merged(store)


def plan_from_job(job: Job, task: TaskSpec) -> SamplePlan:
    params = job.params
    return SamplePlan(
        task=task,
        prompts=list(job.prompts),
        steps=params["steps"],
        chains=params["chains"],
        acceptance=params["acceptance"],
        beta=params["beta"],
        params=SamplingParams(
            temperature=params["temperature"], top_p=params["top_p"], max_tokens=params["max_tokens"], seed=params["seed"]
        ),
        student=params.get("student"),  # absent in jobs from before rounds
    )


def check_sampling_student(session: Session, student_id: str, task_name: str) -> Student:
    """The registered student a request samples from: it exists (404), belongs to the request's task
    and has weights to serve (400)."""
    student = _student(session, student_id)
    if student.task_name != task_name:
        raise InvalidRequest(f"student {student_id!r} was distilled for task {student.task_name!r}, not {task_name!r}: a round "
                             "samples the task its student learned", param="student")
    if not (student.adapter_path or student.merged_path):
        raise InvalidRequest(f"student {student_id!r} has neither an adapter nor merged weights", param="student")
    return student


def _student(session: Session, student_id: str) -> Student:
    student = session.get(Student, student_id)
    if student is None:
        raise NotFound(f"no student {student_id!r}", param="student")
    return student


class RewardPool:
    """Builds each distinct reward spec once (spaCy, classifiers are slow to load) and reuses it."""

    def __init__(self, judge_engine: Engine | None = None, network: NetworkPolicy | None = None) -> None:
        self._judge_engine = judge_engine
        self.network = network or NetworkPolicy()  # where http rewards may connect
        self._rewards: dict[str, RewardModel] = {}
        self._lock = threading.Lock()

    def get(self, spec: dict[str, Any]) -> RewardModel:
        key = json.dumps(spec, sort_keys=True)
        with self._lock:
            if key not in self._rewards:
                self._rewards[key] = build_reward(spec, judge_engine=self._judge_engine, network=self.network)
            return self._rewards[key]


def run_plan(
    plan: SamplePlan,
    engine: Engine,
    rewards: RewardPool,
    *,
    prompts: Sequence[str] | None = None,
    seed_offset: int = 0,
    progress: ProgressCallback | None = None,
    schedule: Schedule = "chains",
) -> list[Chain]:
    """Sample chains for `prompts` (default: all of the plan's)."""
    sampler = Sampler(
        engine, rewards.get(plan.task.reward), critique_request=plan.task.critique_request,
        revision_request=plan.task.revision_request, schedule=schedule,
    )
    params = plan.params
    if params.seed is not None and seed_offset:
        # Each batch of a job gets its own seed, so a resumed job repeats exactly what it would have done.
        params = SamplingParams(params.temperature, params.top_p, params.max_tokens, params.seed + seed_offset, params.stop)
    return sampler.run(
        list(plan.prompts if prompts is None else prompts),
        steps=plan.steps,
        chains=plan.chains,
        acceptance=plan.acceptance,
        beta=plan.beta,
        params=params,
        progress=progress,
    )


def store_finished_run(
    factory: sessionmaker[Session], plan: SamplePlan, chains: list[Chain], *, kind: str, owner: str | None = None
) -> tuple[str, Recorded]:
    """Write a completed run (CLI or synchronous API) as a finished job with its chains and pairs,
    all in one transaction. `owner`: the key id of the caller (None: only admins see it)."""
    with transaction(factory) as session:
        now = utcnow()
        job = Job(
            kind=kind,
            owner=owner,
            task_name=plan.task.name,
            status="succeeded",
            params=plan.job_params(),
            prompts=plan.prompts,
            total=len(plan.prompts),
            done=len(plan.prompts),
            accepted=sum(chain.accepted for chain in chains),
            started_at=now,
            finished_at=now,
        )
        session.add(job)
        session.flush()
        recorded = record_chains(session, job_id=job.id, task_name=plan.task.name, acceptance=plan.acceptance, traces=chains)
        return job.id, recorded
