"""Evaluation prompts never train a student: the preset files are written apart, and the trainer's
data plan drops every pair whose prompt is an evaluation prompt (the task's or the run's)."""

import re

import pytest
from pydantic import ValidationError

from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example, plan_data, plan_split, require_training_pairs, select_examples
from shared.errors import InvalidRequest
from services.trainer.evaluation_figures import gate
from shared.tasks import TaskSpec, normalise_prompt, preset_tasks
from shared.text_stats import finished_part


def _five_grams(text: str) -> set[tuple[str, ...]]:
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


@pytest.mark.parametrize("name", ["sentiment", "safety", "privacy"])
def test_preset_eval_sets_are_written_apart_from_training_prompts(name):
    task = preset_tasks()[name]
    assert len(task.eval_prompts) >= 40 and len(task.prompts) >= 200
    assert len(set(task.eval_prompts)) == len(task.eval_prompts)
    train = {normalise_prompt(p) for p in task.prompts}
    assert not [p for p in task.eval_prompts if normalise_prompt(p) in train]
    # No shared template: not one run of five words in common between any eval and any training prompt.
    train_grams = set().union(*(_five_grams(p) for p in task.prompts))
    shared = [p for p in task.eval_prompts if _five_grams(p) & train_grams]
    assert not shared, shared[:3]


def _examples(prompts, rewards):
    return [Example(i + 1, p, f"answer {i}", 0.0, r) for i, (p, r) in enumerate(zip(prompts, rewards))]


def test_the_tasks_eval_prompts_never_reach_training():
    task = preset_tasks()["sentiment"]
    leaked = [task.eval_prompts[0], "  " + task.eval_prompts[1].upper() + " "]  # case and spacing do not hide a prompt
    examples = _examples(task.prompts[:6] + leaked, [0.5] * 8)
    config = DistillationConfig(task="sentiment", best_per_prompt=False)
    train, eval_prompts = plan_data(examples, config, task)
    assert eval_prompts == task.eval_prompts[: config.max_eval_prompts]
    assert [e.prompt for e in train] == task.prompts[:6]
    train_set = {normalise_prompt(e.prompt) for e in train}
    assert not train_set & {normalise_prompt(p) for p in task.eval_prompts}


def test_a_runs_own_eval_prompts_are_barred_too():
    task = preset_tasks()["sentiment"]
    examples = _examples(task.prompts[:4], [0.5] * 4)
    config = DistillationConfig(task="sentiment", eval_prompts=[task.prompts[0]], best_per_prompt=False)
    train, eval_prompts = plan_split(examples, config, task.eval_prompts)
    assert eval_prompts == [task.prompts[0]] and task.prompts[0] not in [e.prompt for e in train]


def test_held_out_split_when_a_task_has_no_eval_set():
    examples = _examples([f"prompt {i}" for i in range(20)], [0.5] * 20)
    config = DistillationConfig(task="custom", held_out_fraction=0.2)
    train, eval_prompts = plan_split(examples, config, [])
    assert len(eval_prompts) == 4 and not {e.prompt for e in train} & set(eval_prompts)


def test_selection_floor_and_best_per_prompt():
    examples = _examples(["a", "a", "a", "b", "b", "c"], [0.2, 0.9, 0.5, 0.1, 0.4, 0.35])
    best = select_examples(examples, DistillationConfig(task="x", min_reward=0.3))
    assert [(e.prompt, e.reward_after) for e in best] == [("a", 0.9), ("b", 0.4), ("c", 0.35)]
    floor_only = select_examples(examples, DistillationConfig(task="x", best_per_prompt=False), task_floor=0.38)
    assert [e.reward_after for e in floor_only] == [0.9, 0.5, 0.4]
    assert len(select_examples(examples, DistillationConfig(task="x", best_per_prompt=False))) == 6


def test_looping_answers_do_not_train_and_the_next_best_answer_does():
    """An answer that repeats itself teaches looping: above max_repetition it is dropped before the
    best answer of its prompt is picked, so the prompt keeps its best clean answer."""
    looping = "I'm so sorry, I'm so sorry, I'm so sorry, I'm so sorry, I'm so sorry."
    examples = [Example(1, "p", looping, 0.0, 0.9), Example(2, "p", "A warm and fair review of a quiet film.", 0.0, 0.6),
                Example(3, "q", "Short and kind.", 0.0, 0.5)]
    kept = select_examples(examples, DistillationConfig(task="x"))
    assert [e.pair_id for e in kept] == [2, 3]
    assert [e.pair_id for e in select_examples(examples, DistillationConfig(task="x", max_repetition=None))] == [1, 3]


def test_answers_cut_off_at_max_tokens_do_not_train_unless_kept():
    """A truncated answer is not a finished one: with truncated_answers="drop" (the default) it is
    left out before the best answer of its prompt is picked; pairs stored before truncation was
    recorded (None) count as finished. "keep" trains on it."""
    examples = [Example(1, "p", "A long answer that ran out of tok", 0.0, 0.9, truncated=True),
                Example(2, "p", "A short kind answer.", 0.0, 0.6, truncated=False),
                Example(3, "q", "An older pair.", 0.0, 0.5, truncated=None),
                Example(4, "r", "Only a cut-off answer here and", 0.0, 0.7, truncated=True)]
    drop = DistillationConfig(task="x", truncated_answers="drop")
    assert [e.pair_id for e in select_examples(examples, drop)] == [2, 3]
    assert DistillationConfig(task="x").truncated_answers == "drop"
    assert [e.pair_id for e in select_examples(examples, DistillationConfig(task="x", truncated_answers="keep"))] == [1, 3, 4]
    with pytest.raises(InvalidRequest, match="cut off at the job's max_tokens"):
        require_training_pairs(2, 4, 0, drop, preset_tasks()["sentiment"], min_pairs=8)


def test_trim_cuts_a_cut_off_answer_back_to_its_last_finished_sentence():
    """truncated_answers="trim": a cut-off answer trains up to the end of its last finished
    sentence; one whose last finished sentence ends before half of it is dropped; a finished one
    trains as it is. The trimmed answer keeps its flag and its stored reward, and still competes
    for its prompt's best answer."""
    examples = [Example(1, "p", "I loved it. The cast was warm and the songs were bright! The ending felt", 0.0, 0.9, truncated=True),
                Example(2, "p", "A short kind answer.", 0.0, 0.6, truncated=False),
                Example(3, "q", "Sure. Here is a long review that never reached the end of its first", 0.0, 0.8, truncated=True),
                Example(4, "r", "An older pair.", 0.0, 0.5, truncated=None)]
    trim = DistillationConfig(task="x", truncated_answers="trim")
    kept = select_examples(examples, trim)
    assert [(e.pair_id, e.response, e.reward_after, e.truncated) for e in kept] == [
        (1, "I loved it. The cast was warm and the songs were bright!", 0.9, True), (4, "An older pair.", 0.5, None)]
    with pytest.raises(InvalidRequest, match="no finished sentence in their first half"):
        require_training_pairs(2, 4, 0, trim, preset_tasks()["sentiment"], min_pairs=8)


@pytest.mark.parametrize(("text", "finished"), [
    ('Wow! "Great film." And then the', 'Wow! "Great film."'),
    ("It was *superb*. The plot?", "It was *superb*. The plot?"),  # ends finished: kept whole
    ("Here is my review:\n\n1. The plot was thin and the", None),  # "1." numbers a list item
    ("No sentence ends in this one at all", None),
    ("Fine. Then a long sentence that runs on and on past half of the answer", None),
])
def test_finished_part_ends_at_the_last_sentence_end(text, finished):
    assert finished_part(text) == finished


def test_each_prompt_and_answer_trains_once():
    """A job submitted twice stores the same pairs twice; a run reads each (prompt, response) once."""
    twice = [Example(i, f"prompt {i % 3}", f"answer {i % 3}", 0.0, 0.5 + i / 100) for i in range(6)]
    other = [Example(9, "prompt 0", "another answer", 0.0, 0.4)]
    kept = select_examples(twice + other, DistillationConfig(task="x", best_per_prompt=False))
    assert [(e.pair_id, e.prompt, e.response) for e in kept] == [
        (0, "prompt 0", "answer 0"), (1, "prompt 1", "answer 1"), (2, "prompt 2", "answer 2"), (9, "prompt 0", "another answer")]


def test_a_custom_task_cannot_evaluate_on_its_training_prompts():
    spec = dict(name="tone", critique_request="c", revision_request="r", reward={"type": "vader"})
    with pytest.raises(ValidationError, match="both prompts and eval_prompts"):
        TaskSpec(**spec, prompts=["Say hi.", "Say bye."], eval_prompts=["say  HI."])
    assert TaskSpec(**spec, prompts=["Say hi."], eval_prompts=["Wave goodbye."]).eval_prompts == ["Wave goodbye."]


def _figures(low, high, prompts=40, collapsed=False):
    return {"prompts": prompts, "student_minus_base": {"value": (low + high) / 2, "low": low, "high": high},
            "collapse": {"collapsed": collapsed, "ppl_ratio": 3.0 if collapsed else 1.1, "length_ratio": 1.0}}


def test_promotion_gate():
    assert gate(_figures(0.05, 0.3))["promotable"] is True
    assert "includes 0" in gate(_figures(-0.05, 0.3))["reason"]
    assert gate(_figures(-0.3, -0.05))["promotable"] is False  # significantly worse is not promotable either
    assert "too few" in gate(_figures(0.05, 0.3, prompts=5))["reason"]
    assert "collapsed" in gate(_figures(0.05, 0.3, collapsed=True))["reason"]
    assert gate({})["promotable"] is False
