"""The evaluation on vLLM (base + the adapter as a LoRA of one engine) detects a real difference:
an adapter that answers "Pineapple pizza forever." to anything mentions no person, so on the
privacy task's evaluation prompts it beats its base on the PII reward, significantly — and the
collapse check catches that it says one thing to everything, so the gate still refuses it. The same
adapter, registered as the task's active student, runs as the incumbent from merged weights in the
model store; Presidio, the privacy task's second opinion, scores every answer."""

from __future__ import annotations

import pytest

from services.trainer.evaluation_engines import run_evaluation
from shared.distillation.registry import StudentWeights
from shared.distillation.config import EvaluationConfig
from shared.tasks import preset_tasks


@pytest.mark.vllm
def test_vllm_evaluation_detects_a_real_difference_and_a_collapse(make_settings, model_path, trained_adapter):
    pytest.importorskip("vllm")
    settings = make_settings(engine="vllm")  # two engines at trainer.eval_memory_utilization each
    task = preset_tasks()["privacy"]
    config = EvaluationConfig(task="privacy", samples=2, max_tokens=48, max_eval_prompts=16, seed=1)
    phases: list[str] = []
    incumbent = StudentWeights("pineapple", "privacy-student-v1", model_path, adapter_dir=trained_adapter)
    figures = run_evaluation(settings, config, task, base_path=model_path, adapter_dir=trained_adapter, incumbent=incumbent,
                             on_phase=phases.append)

    assert phases[:3] == ["evaluating: base", "evaluating: student", "evaluating: incumbent"] and "evaluating: collapse check" in phases
    assert (settings.resolved_model_store / "merged" / "pineapple" / "config.json").is_file()  # where the student service keeps it too
    assert figures["incumbent"] == {"id": "pineapple", "model": "privacy-student-v1"}
    assert figures["systems"]["incumbent"]["value"] == 0 and abs(figures["student_minus_incumbent"]["value"]) < 0.1
    second = figures["second_opinion"]
    assert second["scorer"] == "presidio" and set(second["systems"]) == {"base", "student", "incumbent"}
    assert second["systems"]["student"]["value"] == 0  # Presidio finds nothing personal in the phrase either
    assert figures["prompts"] == 16 and figures["samples"] == 2
    assert figures["systems"]["student"]["value"] == 0  # no name, e-mail or number in the phrase: the best PII score
    gap = figures["student_minus_base"]
    assert gap["significant"] and gap["low"] > 0 and figures["win_rate"]["value"] > 0.5
    assert any("Pineapple" in example["student"] for example in figures["examples"])
    collapse = figures["collapse"]
    assert collapse["collapsed"] and collapse["ppl_ratio"] > 2
    assert figures["gate"]["promotable"] is False and "collapsed" in figures["gate"]["reason"]
    assert figures["degeneration"]["degenerate"] and "says much the same to every prompt" in figures["gate"]["reason"]
