"""The sampler on the real SmolLM2 with each engine that exists here and the real VADER reward."""

from __future__ import annotations

import threading
import time

import pytest

from live_server import wait_for
from shared.engines.base import ContinuousEngine, SamplingParams
from shared.rewards import build_reward
from shared.critique_revise import Sampler

PROMPTS = [
    "Write a two-sentence negative review of the film Jaws.",
    "Write a two-sentence negative review of the film Titanic.",
    "Explain in two sentences why the film Cats disappointed you.",
]
CRITIQUE = "Point out what is negative or harsh in your answer."
REVISION = "Rewrite your answer to be positive and kind. Reply with the rewritten answer only."
PARAMS = SamplingParams(temperature=0.8, max_tokens=24, seed=11)


@pytest.fixture(scope="module")
def vader():
    return build_reward({"type": "vader"})


def _sampler(engine, reward) -> Sampler:
    return Sampler(engine, reward, critique_request=CRITIQUE, revision_request=REVISION)


class CountingEngine:
    """Wraps a real engine and records the batch size of each call (the batching is what we test).
    It has no `submit`, so the sampler runs its phase-batched schedule on every engine."""

    def __init__(self, engine):
        self.engine, self.name, self.model, self.batches = engine, engine.name, engine.model, []

    def generate(self, conversations, params):
        self.batches.append(len(conversations))
        return self.engine.generate(conversations, params)

    def close(self):
        pass


_RUNS: dict = {}


def _improve_run(engine, vader):
    """One improve run per engine, shared by the tests that only read it (CPU time is scarce)."""
    if engine.name not in _RUNS:
        counting = CountingEngine(engine)
        chains = _sampler(counting, vader).run(PROMPTS, steps=2, chains=2, acceptance="improve", params=PARAMS)
        _RUNS[engine.name] = (chains, counting.batches)
    return _RUNS[engine.name]


def test_shapes_and_one_engine_call_per_phase(any_engine, vader):
    chains, batches = _improve_run(any_engine, vader)
    assert len(chains) == 6
    assert [(c.prompt_index, c.chain_index) for c in chains] == [(i, k) for i in range(3) for k in range(2)]
    # initial, then critique + revision for each of 2 steps: every call carries all 6 chains.
    assert batches == [6, 6, 6, 6, 6]
    for chain in chains:
        assert chain.prompt == PROMPTS[chain.prompt_index]
        assert len(chain.steps) == 2 and chain.initial_text and chain.tokens > 0
        assert all(step.critique and isinstance(step.reward, float) for step in chain.steps)


def test_improve_never_keeps_a_lower_reward(any_engine, vader):
    chains, _ = _improve_run(any_engine, vader)
    for chain in chains:
        current = chain.initial_reward
        for step in chain.steps:
            assert step.accepted == (step.reward > current)
            current = step.reward if step.accepted else current
        assert chain.final_reward == current >= chain.initial_reward
        assert chain.accepted == (chain.final_text != chain.initial_text and any(s.accepted for s in chain.steps))


def test_always_moves_to_every_revision(tf_engine, vader):
    chains = _sampler(tf_engine, vader).run(PROMPTS, steps=1, chains=1, acceptance="always", params=PARAMS)
    for chain in chains:
        step = chain.steps[-1]
        assert step.accepted
        assert (chain.final_text, chain.final_reward) == (step.revision, step.reward)


def test_a_chain_knows_which_answers_were_cut_off_at_max_tokens(any_engine, vader):
    """An answer that ran into max_tokens is flagged truncated (its draft, each revision, the final
    answer); one the model ended itself is not."""
    engine = any_engine
    short = _sampler(engine, vader).run(PROMPTS[:2], steps=1, chains=1, acceptance="always",
                                        params=SamplingParams(temperature=0.0, max_tokens=4, seed=1))
    assert all(c.initial_truncated and c.final_truncated and c.steps[0].truncated for c in short)
    finished = Sampler(engine, vader, critique_request="Say OK.", revision_request="Reply with the single word: yes").run(
        ["Reply with the single word: yes"], steps=1, chains=1, acceptance="always", params=SamplingParams(temperature=0.0, max_tokens=64, seed=1))
    assert not finished[0].initial_truncated and not finished[0].steps[0].truncated and not finished[0].final_truncated, finished[0]


def test_seed_reproduces_with_transformers(tf_engine, vader):
    runs = [_sampler(tf_engine, vader).run(PROMPTS[:2], steps=1, chains=1, params=PARAMS) for _ in range(2)]
    first, second = ([(c.initial_text, c.steps[0].critique, c.steps[0].revision, c.final_reward) for c in run] for run in runs)
    assert first == second
    other = _sampler(tf_engine, vader).run(PROMPTS[:2], steps=1, chains=1, params=SamplingParams(temperature=0.8, max_tokens=24, seed=12))
    assert [c.initial_text for c in other] != [c[0] for c in first]


class RecordingEngine:
    """Wraps a real continuous engine and records every request it is handed and when it ends."""

    def __init__(self, engine):
        self.engine, self.name, self.model = engine, engine.name, engine.model
        self.events: list[tuple[str, int, list]] = []  # ("submit" | "done", request number, conversation)
        self._lock = threading.Lock()

    def generate(self, conversations, params):
        with self._lock:
            self.events.append(("generate", len(conversations), conversations))
        return self.engine.generate(conversations, params)

    def submit(self, conversation, params):
        with self._lock:
            number = sum(kind == "submit" for kind, _, _ in self.events)
            self.events.append(("submit", number, conversation))
        future = self.engine.submit(conversation, params)

        def finished(_future, number=number):
            with self._lock:
                self.events.append(("done", number, conversation))

        future.add_done_callback(finished)
        return future

    def close(self):
        pass


# One prompt with a one-word answer among long ones: its chain should not wait for theirs.
MIXED = ["Reply with the single word: yes.", *PROMPTS]


@pytest.mark.vllm
def test_chains_advance_on_their_own_on_a_continuous_engine(vllm_engine, vader):
    recording = RecordingEngine(vllm_engine)
    assert isinstance(recording, ContinuousEngine) and not isinstance(CountingEngine(vllm_engine), ContinuousEngine)
    reports: list[tuple[str, int, int]] = []
    chains = _sampler(recording, vader).run(MIXED, steps=2, chains=2, acceptance="improve",
                                            params=SamplingParams(temperature=0.8, max_tokens=48, seed=5),
                                            progress=lambda *report: reports.append(report))
    assert [(c.prompt_index, c.chain_index) for c in chains] == [(i, k) for i in range(4) for k in range(2)]
    submitted = [conversation for kind, _, conversation in recording.events if kind == "submit"]
    assert len(submitted) == 8 * 5 and reports[-1][1:] == (40, 40)
    for chain in chains:
        assert chain.prompt == MIXED[chain.prompt_index] and len(chain.steps) == 2 and chain.tokens > 0
        # Every request of the chain carries the chain's own turns: nothing crossed between chains.
        current = chain.initial_text
        for step in chain.steps:
            critique_turns = [{"role": "user", "content": chain.prompt}, {"role": "assistant", "content": current},
                              {"role": "user", "content": CRITIQUE}]
            assert critique_turns in submitted
            assert critique_turns + [{"role": "assistant", "content": step.critique}, {"role": "user", "content": REVISION}] in submitted
            current = step.revision if step.accepted else current
        assert chain.final_text == current
    # No barrier per phase: some critique went to the engine before the last initial answer was done.
    first_critique = next(i for i, (kind, _, conv) in enumerate(recording.events) if kind == "submit" and len(conv) == 3)
    answers = {number for kind, number, conv in recording.events if kind == "submit" and len(conv) == 1}
    last_answer_done = max(i for i, (kind, number, _) in enumerate(recording.events) if kind == "done" and number in answers)
    assert first_critique < last_answer_done, "every critique waited for the slowest answer"


@pytest.mark.vllm
def test_the_phase_schedule_on_a_continuous_engine_makes_one_call_per_phase(vllm_engine, vader):
    recording = RecordingEngine(vllm_engine)
    sampler = Sampler(recording, vader, critique_request=CRITIQUE, revision_request=REVISION, schedule="phases")
    chains = sampler.run(PROMPTS, steps=1, chains=1, params=SamplingParams(temperature=0.8, max_tokens=16, seed=3))
    assert [(kind, size) for kind, size, _ in recording.events] == [("generate", 3)] * 3  # answers, critiques, revisions
    assert [len(chain.steps) for chain in chains] == [1, 1, 1]


@pytest.mark.vllm
def test_a_stopped_run_aborts_its_requests_and_the_engine_serves_on(vllm_engine, vader):
    class Stop(Exception):
        pass

    def stop(_phase, done, _total):
        if done >= 2:
            raise Stop()

    started = time.monotonic()
    with pytest.raises(Stop):
        _sampler(vllm_engine, vader).run(PROMPTS * 4, steps=2, chains=1, params=SamplingParams(max_tokens=256, seed=1), progress=stop)
    # The chains still in flight were aborted in vLLM, not left to run 256 tokens each.
    wait_for(lambda: vllm_engine.engine.output_processor.get_num_unfinished_requests() == 0, 30, "vLLM to drop the aborted requests", 0.1)
    assert time.monotonic() - started < 120
    assert vllm_engine.generate([[{"role": "user", "content": "Say hi."}]], SamplingParams(max_tokens=8))[0].completion_tokens > 0
