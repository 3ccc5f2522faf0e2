"""The distilabel side of bench/vs_distilabel.py: dSC's critique→revise→score job as a distilabel
1.5 pipeline. Runs in .venv-bench's python (`make bench-venv`), never in .venv.

    LoadDataFromDicts(prompts) → TextGeneration (answer) → CritiqueMessages → ChatGeneration (critique)
        → RevisionMessages → ChatGeneration (revision) → ScoreAndAccept (the task's reward, rule "improve")
        → KeepAccepted

Every LLM step is distilabel's `OpenAILLM` against the OpenAI-compatible server the bench started.
The conversations are dSC's (shared/critique_revise.py): user prompt, assistant answer, user
critique request; then assistant critique, user revision request. Texts are stripped as dSC's
engines strip them. The reward is dSC's own (shared.rewards.build_reward on the task's spec).

    .venv-bench/bin/python bench/vs_distilabel_pipeline.py JOB.json RESULT.json

JOB.json: {"base_url", "model", "prompts", "critique_request", "revision_request", "reward",
"temperature", "top_p", "max_tokens", "input_batch_size", "cache_dir"}. RESULT.json gets
{"wall_s", "chains", "accepted", "pairs"}.
"""

# No `from __future__ import annotations`: distilabel finds a step's input by its `StepInput`
# annotation at run time, and a string annotation does not match it.
import json
import sys
import time
from typing import Any

from distilabel.models.llms import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, Step, StepInput
from distilabel.steps.tasks import ChatGeneration, TextGeneration
from distilabel.typing import StepOutput
from pydantic import PrivateAttr


class CritiqueMessages(Step):
    """The critique conversation: user prompt, assistant answer, user critique request."""

    request: str

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "answer"]

    @property
    def outputs(self) -> list[str]:
        return ["messages"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        for row in inputs:
            row["answer"] = (row["answer"] or "").strip()
            row["messages"] = [
                {"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": row["answer"]},
                {"role": "user", "content": self.request},
            ]
        yield inputs


class RevisionMessages(Step):
    """The revision conversation: the critique conversation, + assistant critique, user revision request."""

    request: str

    @property
    def inputs(self) -> list[str]:
        return ["messages", "critique"]

    @property
    def outputs(self) -> list[str]:
        return ["messages"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        for row in inputs:
            row["critique"] = (row["critique"] or "").strip()
            row["messages"] = list(row["messages"]) + [
                {"role": "assistant", "content": row["critique"]},
                {"role": "user", "content": self.request},
            ]
        yield inputs


class ScoreAndAccept(Step):
    """dSC's reward on the answer and on the revision; accepted under dSC's rule "improve": the
    revision is non-empty, differs from the answer and scores strictly higher."""

    reward_spec: dict[str, Any]
    _reward: Any = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        from shared.rewards import build_reward

        self._reward = build_reward(self.reward_spec)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "answer", "revision"]

    @property
    def outputs(self) -> list[str]:
        return ["answer_reward", "revision_reward", "accepted"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        prompts = [row["instruction"] for row in inputs]
        revisions = [(row["revision"] or "").strip() for row in inputs]
        # One call for the step, as dSC's sampler scores a whole phase at once.
        scores = [float(s) for s in self._reward.score(prompts + prompts, [row["answer"] for row in inputs] + revisions)]
        for i, (row, revision) in enumerate(zip(inputs, revisions)):
            row["revision"] = revision
            row["answer_reward"], row["revision_reward"] = scores[i], scores[len(inputs) + i]
            row["accepted"] = bool(revision) and revision != row["answer"] and row["revision_reward"] > row["answer_reward"]
        yield inputs


class KeepAccepted(Step):
    """Only the accepted (prompt, improved answer) pairs go on."""

    @property
    def inputs(self) -> list[str]:
        return ["accepted"]

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        yield [row for row in inputs if row["accepted"]]


def build_pipeline(job: dict) -> Pipeline:
    generation_kwargs = {"temperature": job["temperature"], "top_p": job["top_p"], "max_new_tokens": job["max_tokens"]}
    batch = job.get("input_batch_size")  # None: distilabel's defaults (50)
    sized = {"input_batch_size": batch} if batch else {}

    def llm() -> OpenAILLM:
        return OpenAILLM(model=job["model"], base_url=job["base_url"], api_key="EMPTY", generation_kwargs=generation_kwargs)

    with Pipeline(name="dsc-critique-revise", cache_dir=job["cache_dir"]) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in job["prompts"]], **({"batch_size": batch} if batch else {}))
        answer = TextGeneration(name="answer", llm=llm(), output_mappings={"generation": "answer"}, **sized)
        critique_turns = CritiqueMessages(name="critique_messages", request=job["critique_request"], **sized)
        critique = ChatGeneration(name="critique", llm=llm(), output_mappings={"generation": "critique"}, **sized)
        revision_turns = RevisionMessages(name="revision_messages", request=job["revision_request"], **sized)
        revision = ChatGeneration(name="revision", llm=llm(), output_mappings={"generation": "revision"}, **sized)
        score = ScoreAndAccept(name="score", reward_spec=job["reward"], **sized)
        keep = KeepAccepted(name="keep_accepted", **sized)
        load >> answer >> critique_turns >> critique >> revision_turns >> revision >> score >> keep
    return pipeline


def main() -> None:
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path) as handle:
        job = json.load(handle)
    pipeline = build_pipeline(job)
    start = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    wall_s = time.perf_counter() - start
    rows: list[dict] = []
    for subset in distiset.values():
        for split in subset.values():
            rows.extend(split.to_list())
    pairs = [{"prompt": row["instruction"], "answer": row["answer"], "revision": row["revision"]} for row in rows]
    with open(result_path, "w") as handle:
        json.dump({"wall_s": wall_s, "chains": len(job["prompts"]), "accepted": len(pairs), "pairs": pairs}, handle)


if __name__ == "__main__":
    main()
