"""Request and response models of the teacher API (docs/architecture.md §2.1), one place for the public shapes.

Sampling requests reuse `shared.sampling_protocol.SampleRequest` (the CLI builds the same object), so the
synchronous endpoint, jobs and `dsc sample` accept exactly the same fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Job, Pair
from shared.keys import owner_name
from shared.sampling_protocol import SampleRequest
from shared.tasks import TaskSpec

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


# --- tasks ---------------------------------------------------------------------------------------


class TaskSummary(BaseModel):
    """A task without its prompt set (GET /v1/tasks/{name} has the prompts); reward secrets redacted."""

    name: str
    description: str
    reward: dict[str, Any]
    second_opinion: dict[str, Any] | None
    acceptance: str
    beta: float
    steps: int
    prompt_count: int
    eval_prompt_count: int
    distillation: dict[str, Any]
    builtin: bool

    @classmethod
    def of(cls, spec: TaskSpec) -> "TaskSummary":
        shown = spec.public()
        return cls(
            name=spec.name, description=spec.description, reward=shown.reward, second_opinion=shown.second_opinion, acceptance=spec.acceptance,
            beta=spec.beta, steps=spec.steps, prompt_count=len(spec.prompts),
            eval_prompt_count=len(spec.eval_prompts), distillation=spec.distillation, builtin=spec.builtin,
        )


class TaskList(BaseModel):
    data: list[TaskSummary]


# --- jobs ----------------------------------------------------------------------------------------


class JobRequest(SampleRequest):
    """The body of POST /v1/jobs: a sampling request whose chains are always stored."""

    store: Literal[True] = Field(True, description="A job always stores its chains (store=false is for POST /v1/critique-revise).")


class JobCreated(BaseModel):
    id: str
    status: JobStatus


class Progress(BaseModel):
    done: int = Field(description="Prompts processed and committed.")
    total: int = Field(description="Prompts in the job.")
    accepted: int = Field(description="Accepted chains (= stored pairs) so far.")


class JobView(BaseModel):
    id: str
    kind: str = Field(description="job (queued through POST /v1/jobs), sync (POST /v1/critique-revise) or cli.")
    owner: str = Field(description="Key id of the key that created it (the first 16 hex digits of the key's SHA-256), or "
                       "'none' (dsc sample, a teacher without keys): what a distillation's `owners` names.")
    task: str
    status: JobStatus
    progress: Progress
    params: dict[str, Any]
    cancel_requested: bool
    attempt: int = Field(description="The most times one of its batches was claimed (> 1 after a rescue).")
    failures: int = Field(description="Failed batch tries so far; the job fails when one batch fails job_max_failures times.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> "JobView":
        return cls(
            id=job.id, kind=job.kind, owner=owner_name(job.owner), task=job.task_name, status=job.status,
            progress=Progress(done=job.done, total=job.total, accepted=job.accepted),
            params=job.params or {}, cancel_requested=job.cancel_requested, attempt=job.attempt,
            failures=job.failures, error=job.error, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    data: list[JobView]


# --- pairs ---------------------------------------------------------------------------------------


class PairView(BaseModel):
    id: int
    job_id: str
    task: str
    prompt_index: int
    chain_index: int
    prompt: str
    response: str
    reward_before: float
    reward_after: float
    reward_gain: float
    truncated: bool | None = Field(description="The response was cut off at the job's max_tokens (null: stored before "
                                   "this was recorded). The trainer leaves such answers out by default.")
    excluded: bool = Field(description="Excluded in review (the console): kept and exported, never trained on.")
    excluded_reason: str | None
    excluded_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, pair: Pair) -> "PairView":
        return cls(
            id=pair.id, job_id=pair.job_id, task=pair.task_name, prompt_index=pair.prompt_index,
            chain_index=pair.chain_index, prompt=pair.prompt, response=pair.response,
            reward_before=pair.reward_before, reward_after=pair.reward_after, reward_gain=pair.reward_gain, truncated=pair.truncated,
            excluded=pair.excluded, excluded_reason=pair.excluded_reason, excluded_at=pair.excluded_at,
            created_at=pair.created_at,
        )


MAX_EXCLUSION_REASON = 500


class Exclusion(BaseModel):
    """Why a pair must not train (PUT /admin/pairs/{id}/exclusion); kept beside the pair."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=MAX_EXCLUSION_REASON, description="Why the pair must not train, in a sentence.")


class PairPage(BaseModel):
    data: list[PairView]
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


def chat_record(pair: Any) -> dict[str, Any]:
    """One line of the JSONL export: TRL's conversational SFT format plus the rewards and the review."""
    return {
        "messages": [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.response}],
        "task": pair.task_name,
        "reward_before": pair.reward_before,
        "reward_after": pair.reward_after,
        "truncated": pair.truncated,
        "excluded": pair.excluded,
        "excluded_reason": pair.excluded_reason,
    }
