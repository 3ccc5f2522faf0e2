"""`dsc distil --rounds N`: sample → distil → evaluate → promote, N times, as a client of the running
teacher over HTTP. Round 1 samples with the teacher's model (or a student given to start from);
each later round's job names the previous round's student (`student`), so the teacher samples
its drafts, critiques and revisions from it (docs/distillation.md, Rounds). A round whose student
the promotion gate refuses ends the rounds: a student that does not beat its base is no better
proposal for the next one (unless force_promotion, for a run too small to judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.demo import Client, _training_progress, _watch, console


@dataclass
class RoundsConfig:
    task: str
    rounds: int = 2
    prompts: int | None = None  # of the task's training set; None: all of it
    chains: int = 2
    max_tokens: int = 96
    temperature: float = 0.7
    acceptance: str | None = None  # None: the task's
    seed: int = 0
    student: str | None = None  # a registered student round 1 samples from; None: the teacher's model
    distillation: dict[str, Any] = field(default_factory=dict)  # further POST /admin/distillations fields
    force_promotion: bool = False


def run_rounds(teacher_url: str, admin_token: str, config: RoundsConfig) -> list[dict[str, Any]]:
    """Run the rounds; returns one summary per round that ran (job, run, student, round, parent, promoted)."""
    teacher = Client(teacher_url, admin_token)
    task = teacher.call("GET", f"/v1/tasks/{config.task}")
    prompts = task["prompts"][: config.prompts] if config.prompts else task["prompts"]
    sampler, done = config.student, []
    for number in range(1, config.rounds + 1):
        console.rule(f"round {number} of {config.rounds}: sampling with {sampler or 'the teacher model'}")
        job = teacher.call("POST", "/v1/jobs", json={
            "task": config.task, "prompts": prompts, "chains": config.chains, "max_tokens": config.max_tokens,
            "temperature": config.temperature, "acceptance": config.acceptance, "seed": config.seed + number, "student": sampler,
        })
        job = _watch("sampling", lambda: teacher.call("GET", f"/v1/jobs/{job['id']}"),
                     lambda s: (s["progress"]["done"], s["progress"]["total"], f"({s['progress']['accepted']} accepted)"))
        run = teacher.call("POST", "/admin/distillations", json={
            "seed": config.seed, **config.distillation, "task": config.task, "jobs": [job["id"]]})
        run = _watch("training", lambda: teacher.call("GET", f"/admin/distillations/{run['id']}"), _training_progress, interval=3)
        student = next(s for s in teacher.call("GET", "/admin/students", params={"task": config.task})["data"]
                       if s["id"] == run["student_id"])
        summary = {"round": student["round"], "parent_id": student["parent_id"], "job_id": job["id"], "run_id": run["id"],
                   "student_id": student["id"], "model": student["model"], "gate": student["gate"], "promoted": False}
        done.append(summary)
        console.print(f"{student['model']} (round {student['round']}, parent {student['parent_id'] or 'the teacher'}): {student['gate']}")
        if not student["promotable"] and not config.force_promotion:
            console.print(f"[yellow]not promoted; the rounds end here: {student['gate']}[/yellow]")
            break
        forced = not student["promotable"]
        teacher.call("POST", f"/admin/students/{student['id']}/promote",
                     params={"force": "true", "reason": "dsc distil --rounds --force-promotion"} if forced else None)
        summary["promoted"] = True
        sampler = student["id"]
    return done

