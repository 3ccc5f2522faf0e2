"""End to end through the admin API: pairs from the real sampler → POST /admin/distillations →
a trainer worker trains SmolLM2 with LoRA → evaluated, reported, registered → promoted."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from services.trainer.worker import TrainerWorker
from shared.db.models import Student, utcnow


def test_distillation_from_sampled_pairs_end_to_end(make_settings, tf_engine, sentiment_samples, model_path, helpers):
    settings = make_settings()
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        job_id = helpers.store_samples(teacher.sessions, sentiment_samples)
        with teacher.sessions() as session, session.begin():  # an older student of the task, active now
            session.add(Student(id="old-student", name="sentiment-student", version=0, task_name="sentiment", base_model=str(model_path),
                                merged_path=str(model_path), metrics={}, active=True, promoted_at=utcnow()))

        body = {"task": "sentiment", "jobs": [job_id], "eval_prompts": sentiment_samples.eval_prompts, "max_steps": 6,
                "batch_size": 2, "max_seq_len": 96, "save_steps": 3, "learning_rate": 5e-4, "eval_max_tokens": 16,
                "eval_samples": 2, "merge": True, "seed": 3,
                "min_reward": -1.0, "best_per_prompt": False, "max_repetition": None}  # every accepted pair trains: the fixture's are few
        created = admin.post("/admin/distillations", json=body)
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        queued = admin.get(f"/admin/distillations/{run_id}").json()
        assert queued["status"] == "queued" and queued["progress"]["total"] == 6
        assert queued["config"]["pair_id_max"] >= 1 and queued["config"]["base_model"] == str(model_path)

        worker = TrainerWorker(settings, teacher.sessions)
        assert worker.run_once()
        run = admin.get(f"/admin/distillations/{run_id}").json()
        assert run["status"] == "succeeded", run["error"]

    # progress and metrics
    assert run["progress"]["step"] == run["progress"]["total"] == 6 and run["progress"]["loss"] > 0
    train, evaluation = run["metrics"]["train"], run["metrics"]["eval"]
    assert train["steps"] == 6 and len(train["loss_curve"]) == 6 and train["pairs"] == sentiment_samples.accepted
    assert evaluation["prompts"] == len(sentiment_samples.eval_prompts) and evaluation["samples"] == 2
    for side in ("base", "student"):
        estimate = evaluation["systems"][side]
        assert -1 <= estimate["low"] <= estimate["value"] <= estimate["high"] <= 1 and estimate["n"] == evaluation["prompts"]
    gap = evaluation["student_minus_base"]
    assert gap["low"] <= gap["value"] <= gap["high"] and gap["significant"] == (gap["low"] > 0 or gap["high"] < 0)
    assert 0 <= evaluation["win_rate"]["value"] <= 1 and len(evaluation["per_prompt"]) == evaluation["prompts"]
    assert {"prompt", "base", "student", "base_reward", "student_reward"} <= set(evaluation["examples"][0])
    collapse = evaluation["collapse"]
    assert collapse["prompts"] == 24 and collapse["base_ppl_of_base_answers"] > 1 and collapse["ppl_ratio"] > 0
    assert evaluation["gate"]["promotable"] is False and evaluation["significant"] is False  # 3 prompts: never significant
    # champion/challenger: the task's active student answered the same prompts; the second opinion scored every answer
    assert evaluation["incumbent"] == {"id": "old-student", "model": "sentiment-student-v0"}
    assert evaluation["systems"]["incumbent"]["n"] == evaluation["prompts"] and "student_minus_incumbent" in evaluation
    assert set(evaluation["second_opinion"]["systems"]) == {"base", "student", "incumbent"}
    assert run["progress"]["phase"] == "succeeded"

    # artifacts: adapter (plain peft), merged weights, tokenizer, config, metrics, report, data snapshot
    run_dir = Path(run["artifact_dir"])
    assert run_dir.parent == settings.resolved_model_store / "students"
    for name in ("distillation.json", "metrics.json", "report.png", "snapshot.jsonl", "split.json"):
        assert (run_dir / name).is_file(), name
    [outputs] = (run_dir / "outputs").iterdir()  # this attempt's own directory (another attempt never writes into it)
    adapter_dir, merged_dir = outputs / "adapter", outputs / "merged"
    for path in (adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors", adapter_dir / "tokenizer_config.json",
                 merged_dir / "config.json", merged_dir / "tokenizer_config.json"):
        assert path.is_file(), path
    assert json.loads((run_dir / "metrics.json").read_text())["eval"]["systems"] == evaluation["systems"]
    snapshot = [json.loads(line) for line in (run_dir / "snapshot.jsonl").read_text().splitlines()]
    assert len(snapshot) == sentiment_samples.accepted and all(row["pair_id"] for row in snapshot)

    _adapter_loads_with_plain_peft_and_generates(adapter_dir, model_path)
    from services.student.adapters import validate_adapter

    assert validate_adapter(adapter_dir, model_path, max_rank=settings.student.max_lora_rank)["r"] == 16

    # registry and promotion
    with helpers.running_teacher(settings, tf_engine) as teacher, teacher.admin() as admin:
        report = admin.get(f"/admin/distillations/{run_id}/report.png")
        assert report.status_code == 200 and report.headers["content-type"] == "image/png"
        assert report.content[:8] == b"\x89PNG\r\n\x1a\n" and len(report.content) > 10_000
        students = admin.get("/admin/students").json()["data"]
        new = next(s for s in students if s["run_id"] == run_id)
        assert (new["name"], new["version"], new["task"], new["active"]) == ("sentiment-student", 1, "sentiment", False)
        assert new["adapter_path"] == str(adapter_dir) and new["merged_path"] == str(merged_dir)
        assert new["metrics"]["eval"]["systems"] == evaluation["systems"] and new["base_model"] == str(model_path)
        assert new["promotable"] == evaluation["gate"]["promotable"] and new["gate"] == evaluation["gate"]["reason"]
        assert admin.get(f"/admin/distillations/{run_id}").json()["student_id"] == new["id"]

        # the run did not touch the active student; promotion switches it, atomically, one per task
        assert _active(teacher.sessions) == ["old-student"]
        # three evaluation prompts cannot show a significant gain: the gate refuses, force promotes
        assert not new["promotable"] and "too few to call a gain significant" in new["gate"]
        refused = admin.post(f"/admin/students/{new['id']}/promote")
        assert refused.status_code == 409 and "force=true" in refused.json()["error"]["message"]
        assert _active(teacher.sessions) == ["old-student"]
        promoted = admin.post(f"/admin/students/{new['id']}/promote", params={"force": "true"})
        assert promoted.status_code == 200 and promoted.json()["active"] is True
        assert _active(teacher.sessions) == [new["id"]]
        assert admin.post("/admin/students/old-student/promote", params={"force": "true"}).json()["active"] is True
        assert _active(teacher.sessions) == ["old-student"]
        assert admin.post(f"/admin/students/{new['id']}/promote", params={"force": True}).status_code == 200
        assert [s["id"] for s in admin.get("/admin/students", params={"active": True}).json()["data"]] == [new["id"]]
        listed = admin.get("/admin/distillations", params={"status": "succeeded"}).json()["data"]
        assert [r["id"] for r in listed] == [run_id]


def _active(sessions) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Student.id).where(Student.task_name == "sentiment", Student.active.is_(True))))


def _adapter_loads_with_plain_peft_and_generates(adapter_dir: Path, model_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), str(adapter_dir)).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Review the film Heat."}], add_generation_prompt=True, tokenize=False)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()

