"""Request and result models shared by the CLI and the teacher API (one shape everywhere)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.sampler import Acceptance, Chain


class SampleRequest(BaseModel):
    """What to sample: a task, prompts (or the task's prompt set), and chain settings.

    Unset chain settings take the task's defaults.
    """

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=64)
    prompts: list[str] | None = Field(None, description="Prompts; omitted → the task's prompt set.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    steps: int | None = Field(None, ge=1)
    chains: int = Field(1, ge=1)
    acceptance: Acceptance | None = None
    beta: float | None = Field(None, gt=0)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    seed: int | None = None
    store: bool = True


class Scored(BaseModel):
    text: str
    reward: float


class StepResult(BaseModel):
    critique: str
    revision: str
    reward: float
    accepted: bool


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
            initial=Scored(text=chain.initial_text, reward=chain.initial_reward),
            steps=[StepResult(critique=s.critique, revision=s.revision, reward=s.reward, accepted=s.accepted) for s in chain.steps],
            final=Scored(text=chain.final_text, reward=chain.final_reward),
            accepted=chain.accepted,
        )


class SampleResponse(BaseModel):
    job_id: str | None = None
    results: list[ChainResult]
