"""Tasks: what to critique and revise for, and how to score it.

Presets (sentiment, safety, privacy) live in code with their prompt sets; custom tasks are data in
the database. A custom task cannot take a preset's name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Task
from shared.errors import Conflict, NotFound, validation_summary
from shared.critique_revise import Acceptance
from shared.request_fields import TASK_NAME_PATTERN, Count, NonBlank, Real, Text

# The student service's model aliases: a task (and so a student) by one of these names could never be addressed.
RESERVED_TASK_NAMES = frozenset({"base", "default", "student"})
# The distillation fields a task may set a default for: the recipe, not which pairs or where they go.
TASK_RECIPE_FIELDS = ("objective", "epochs", "learning_rate", "dpo_beta", "min_margin", "truncated_answers")


def _reward_schema() -> dict[str, Any]:
    """The reward spec's JSON schema (one object per type, `type` required), inline: the field stays
    a plain dict that parse_reward_spec checks with its own messages."""
    from pydantic import TypeAdapter

    from shared.rewards.specs import RewardSpec

    schema = TypeAdapter(RewardSpec).json_schema()
    definitions = schema.pop("$defs", {})
    branches = []
    for reference in schema["oneOf"]:
        branch = dict(definitions[reference["$ref"].rsplit("/", 1)[-1]])
        branch["required"] = sorted({"type", *branch.get("required", [])})
        branches.append(branch)
    return {"oneOf": branches}


_REWARD_SCHEMA = _reward_schema()


def _recipe_schema(schema: dict[str, Any]) -> None:
    """`distillation`'s JSON schema, filled in when the OpenAPI document is built: an object of the
    recipe fields only, each as DistillationConfig describes it (imported here: that module must
    not be a dependency of this one's import)."""
    from shared.distillation.config import DistillationConfig

    fields = DistillationConfig.model_json_schema()["properties"]
    schema.update(type="object", additionalProperties=False, properties={name: fields[name] for name in TASK_RECIPE_FIELDS})


class TaskSpec(BaseModel):
    """A task as users see and create it."""

    name: str = Field(pattern=TASK_NAME_PATTERN, description="Lower-case slug, unique.")
    description: Text = Field("", max_length=2000)
    critique_request: Text = Field(min_length=1, max_length=4000, description="User turn asking for a critique of the answer.")
    revision_request: Text = Field(min_length=1, max_length=4000, description="User turn asking for a revision that applies the critique.")
    reward: dict[str, Any] = Field(description='Reward spec, e.g. {"type": "vader"}.', json_schema_extra=_REWARD_SCHEMA)
    second_opinion: dict[str, Any] | None = Field(
        None, description="A second scorer (any reward spec) the evaluation reports beside the reward; it never selects "
        "training pairs. A student that gains on the reward but loses significantly on it is not promotable without force.",
        json_schema_extra={"anyOf": [_REWARD_SCHEMA, {"type": "null"}]},
    )
    acceptance: Acceptance = "improve"
    beta: Real = Field(1.0, gt=0, description="Temperature of the reward tilt (mh acceptance).")
    steps: Count = Field(1, le=8)
    train_min_reward: Real | None = Field(
        None, description="Default reward floor of the pairs a distillation trains on (a run's min_reward overrides it).",
    )
    distillation: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Recipe defaults for distillations of this task: values of {', '.join(TASK_RECIPE_FIELDS)} that a run "
        "leaving them unset gets (before the deployment's defaults; the run's stored config records what applied). The "
        "presets hold the recipe docs/distillation.md measured best on them.",
        json_schema_extra=_recipe_schema,
    )
    prompts: list[NonBlank] = Field(default_factory=list, description="Optional prompt set (what jobs sample by default).")
    eval_prompts: list[NonBlank] = Field(
        default_factory=list,
        description="Evaluation prompts, written apart from the training prompts; pairs of these prompts never train a student.",
    )
    builtin: bool = Field(False, json_schema_extra={"readOnly": True}, description="A preset (set by the service).")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_TASK_NAMES:
            raise ValueError(f"{value!r} is reserved ({', '.join(sorted(RESERVED_TASK_NAMES))} are the student service's model aliases)")
        return value

    @field_validator("reward")
    @classmethod
    def _check_reward(cls, value: dict[str, Any]) -> dict[str, Any]:
        from shared.rewards import parse_reward_spec

        return parse_reward_spec(value).model_dump(exclude_none=True)

    @field_validator("second_opinion")
    @classmethod
    def _check_second_opinion(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from shared.errors import InvalidRequest
        from shared.rewards import parse_reward_spec

        if value is None:
            return None
        try:
            return parse_reward_spec(value).model_dump(exclude_none=True)
        except InvalidRequest as error:  # name the field it came from, not `reward`
            raise InvalidRequest(error.message.replace("reward spec", "second_opinion spec", 1),
                                 param=(error.param or "reward").replace("reward", "second_opinion", 1)) from None

    @field_validator("distillation")
    @classmethod
    def _check_distillation(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pydantic import ValidationError

        from shared.distillation.config import DistillationConfig

        unknown = sorted(set(value) - set(TASK_RECIPE_FIELDS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} cannot be a task's default (these can: {', '.join(TASK_RECIPE_FIELDS)})")
        try:
            config = DistillationConfig(task="any", **value)
        except ValidationError as error:
            raise ValueError(validation_summary(error)) from None
        return config.model_dump(include=set(value))

    def public(self) -> "TaskSpec":
        """The task as it may be shown: its reward spec's secrets redacted (they are write-only)."""
        from shared.rewards import public_reward

        return self.model_copy(update={"reward": public_reward(self.reward),
                                       "second_opinion": public_reward(self.second_opinion) if self.second_opinion else None})

    @model_validator(mode="after")
    def _check_separation(self) -> "TaskSpec":
        shared = {normalise_prompt(p) for p in self.prompts} & {normalise_prompt(p) for p in self.eval_prompts}
        if shared:
            raise ValueError(f"{len(shared)} prompt(s) are in both prompts and eval_prompts; an evaluation prompt must never train")
        return self


def normalise_prompt(prompt: str) -> str:
    """The identity of a prompt for train/eval separation: case and spacing do not make a new prompt."""
    return " ".join(prompt.split()).casefold()


def preset_tasks() -> dict[str, TaskSpec]:
    from shared.tasks.presets import PRESET_TASKS, eval_file_name, load_preset_prompts

    specs = {}
    for name, preset in PRESET_TASKS.items():
        fields = {key: value for key, value in preset.items() if key != "prompts_file"}
        specs[name] = TaskSpec(**fields, prompts=load_preset_prompts(preset["prompts_file"]),
                               eval_prompts=load_preset_prompts(eval_file_name(preset["prompts_file"])), builtin=True)
    return specs


def _from_row(row: Task) -> TaskSpec:
    return TaskSpec.model_construct(
        name=row.name,
        description=row.description,
        critique_request=row.critique_request,
        revision_request=row.revision_request,
        reward=row.reward,
        second_opinion=row.second_opinion,
        acceptance=row.acceptance,
        beta=row.beta,
        steps=row.steps,
        train_min_reward=row.train_min_reward,
        distillation=dict(row.distillation or {}),
        prompts=list(row.prompts or []),
        eval_prompts=list(row.eval_prompts or []),
        builtin=False,
    )


def get_task(session: Session, name: str) -> TaskSpec:
    presets = preset_tasks()
    if name in presets:
        return presets[name]
    row = session.scalar(select(Task).where(Task.name == name))
    if row is None:
        known = sorted(presets) + list(session.scalars(select(Task.name).order_by(Task.name)))
        raise NotFound(f"unknown task {name!r}; known tasks: {', '.join(known)}", param="task")
    return _from_row(row)


def list_tasks(session: Session) -> list[TaskSpec]:
    custom = [_from_row(row) for row in session.scalars(select(Task).order_by(Task.name))]
    return list(preset_tasks().values()) + custom


def create_task(session: Session, spec: TaskSpec) -> TaskSpec:
    """Store a custom task (caller commits). Names are unique across presets and custom tasks."""
    if spec.name in preset_tasks() or session.scalar(select(Task.id).where(Task.name == spec.name)) is not None:
        raise Conflict(f"a task named {spec.name!r} already exists", param="name")
    data = spec.model_dump(exclude={"builtin"})
    session.add(Task(**data, builtin=False))
    session.flush()
    return spec.model_copy(update={"builtin": False})
