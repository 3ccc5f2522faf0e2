"""The teacher's request limits (settings), each enforced with a 4xx that names the limit.

Limits apply to the resolved plan (after task defaults and the task's prompt set), so a request
that leans on defaults is held to the same bounds as one that spells everything out.
"""

from __future__ import annotations

from typing import Sequence

from shared.errors import InvalidRequest
from shared.sampling_run import SamplePlan, check_student_engine
from shared.settings import Settings
from shared.web.routing import SchemaLimits


class LimitExceeded(InvalidRequest):
    """A request asks for more than a configured limit allows (400, names the setting)."""

    error_type = "limit_exceeded_error"


def _exceeds(what: str, value: int, limit: int, setting: str, param: str) -> LimitExceeded:
    return LimitExceeded(f"{what} {value} exceeds the limit of {limit} ({setting})", param=param)


def check_prompts(prompts: Sequence[str], settings: Settings, *, max_prompts: int, count_setting: str) -> None:
    if len(prompts) > max_prompts:
        raise _exceeds("number of prompts", len(prompts), max_prompts, count_setting, "prompts")
    for index, prompt in enumerate(prompts):
        if len(prompt) > settings.teacher.max_prompt_chars:
            raise LimitExceeded(
                f"prompt {index} has {len(prompt)} characters, over the limit of {settings.teacher.max_prompt_chars} (max_prompt_chars)",
                param="prompts",
            )


def check_plan(plan: SamplePlan, settings: Settings, *, max_prompts: int, count_setting: str) -> None:
    """Every limit of a sampling request (synchronous call or job)."""
    check_prompts(plan.prompts, settings, max_prompts=max_prompts, count_setting=count_setting)
    if plan.params.max_tokens > settings.teacher.max_tokens_limit:
        raise _exceeds("max_tokens", plan.params.max_tokens, settings.teacher.max_tokens_limit, "max_tokens_limit", "max_tokens")
    if plan.steps > settings.teacher.max_steps:
        raise _exceeds("steps", plan.steps, settings.teacher.max_steps, "max_steps", "steps")
    if plan.chains > settings.teacher.max_chains:
        raise _exceeds("chains", plan.chains, settings.teacher.max_chains, "max_chains", "chains")
    check_student_engine(plan, settings)


def schema_limits(settings: Settings) -> SchemaLimits:
    """The limits above as the OpenAPI schema states them (shared.web.routing.document_limits)."""
    teacher = settings.teacher

    def sampling(max_prompts: int) -> dict[str, dict[str, int]]:
        return {"prompts": {"maxItems": max_prompts, "items.maxLength": teacher.max_prompt_chars},
                "max_tokens": {"maximum": teacher.max_tokens_limit}, "steps": {"maximum": teacher.max_steps},
                "chains": {"maximum": teacher.max_chains}}

    # Not TaskSpec: it is also the answer of GET /v1/tasks, where a preset's prompt set may be longer.
    return {
        "SampleRequest": sampling(teacher.max_sync_prompts),
        "JobRequest": sampling(teacher.max_job_prompts),
        "DistillationConfig": {"max_steps": {"maximum": settings.distill.max_steps},
                               "lora_r": {"maximum": settings.student.max_lora_rank}},
    }
