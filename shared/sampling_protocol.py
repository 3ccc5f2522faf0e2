"""The sampling request and its result: one shape for the CLI (`dsc sample`) and the teacher API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.critique_revise import Acceptance, Chain
from shared.request_fields import Count, Real, Seed, Text, bounded_real

Positive = bounded_real(gt=0)


class SampleRequest(BaseModel):
    """What to sample: a task, prompts (or the task's prompt set), and chain settings.

    Unset chain settings take the task's defaults.
    """

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=64)
    prompts: list[Text] | None = Field(None, description="Prompts; omitted → the task's prompt set.")
    limit: Count | None = Field(None, description="Use only the first N prompts.")
    steps: Count | None = None
    chains: Count = 1
    acceptance: Acceptance | None = None
    beta: Positive | None = None
    temperature: Real = Field(0.7, ge=0, le=2)
    top_p: Real = Field(1.0, gt=0, le=1)
    max_tokens: Count = 128
    seed: Seed | None = None
    store: bool = Field(True, strict=True)
    student: str | None = Field(
        None, min_length=1, max_length=32,
        description="Id of a registered student of this task to write the drafts, critiques and revisions instead of the "
        "teacher's model: the next round of distillation starts from it (docs/distillation.md, Rounds). Rewards (an "
        "llm-judge too) stay the teacher's.")


class Scored(BaseModel):
    text: str
    reward: float
    truncated: bool = False  # cut off at max_tokens


class StepResult(BaseModel):
    critique: str
    revision: str
    reward: float
    accepted: bool
    truncated: bool = False  # the revision was cut off at max_tokens


class ChainResult(BaseModel):
    prompt: str
    prompt_index: int
    chain_index: int
    initial: Scored
    steps: list[StepResult]
    final: Scored
    accepted: bool

    @classmethod
    def from_chain(cls, chain: Chain) -> "ChainResult":
        return cls(
            prompt=chain.prompt,
            prompt_index=chain.prompt_index,
            chain_index=chain.chain_index,
            initial=Scored(text=chain.initial_text, reward=chain.initial_reward, truncated=chain.initial_truncated),
            steps=[StepResult(critique=s.critique, revision=s.revision, reward=s.reward, accepted=s.accepted, truncated=s.truncated)
                   for s in chain.steps],
            final=Scored(text=chain.final_text, reward=chain.final_reward, truncated=chain.final_truncated),
            accepted=chain.accepted,
        )


class SampleResponse(BaseModel):
    job_id: str | None = None
    results: list[ChainResult]
