"""`dsc demo`: the main job end to end, as a client of the running services over HTTP.

Sample a sentiment job on the teacher, distil a student from its accepted pairs, promote it, then
ask base model, teacher (critique→revise) and student the same held-out prompts and compare rewards.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


@dataclass
class DemoConfig:
    task: str = "sentiment"
    train_prompts: int = 48
    eval_prompts: int = 12
    chains: int = 2
    max_tokens: int = 96
    max_steps: int = 60
    acceptance: str = "improve"
    seed: int = 0
    out_dir: Path = Path("demo-output")


class DemoError(RuntimeError):
    pass


class Client:
    """Thin httpx wrapper that turns error bodies into DemoError with the service's message."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=600)

    def call(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except Exception:
                message = response.text[:500]
            raise DemoError(f"{method} {path} → {response.status_code}: {message}")
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response.content


def _watch(title: str, poll: Callable[[], dict], done_of: Callable[[dict], tuple[int, int, str]], interval: float = 2.0) -> dict:
    """Poll a job or run until it ends, with a progress bar."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
        handle = bar.add_task(title, total=None)
        while True:
            state = poll()
            done, total, note = done_of(state)
            bar.update(handle, completed=done, total=total or None, description=f"{title} {note}".strip())
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(interval)
    if state["status"] != "succeeded":
        raise DemoError(f"{title} ended {state['status']}: {state.get('error') or ''}")
    return state


def run_demo(teacher_url: str, student_url: str, client_key: str, admin_token: str, config: DemoConfig) -> dict:
    from shared.rewards import build_reward

    teacher = Client(teacher_url, admin_token)
    student = Client(student_url, client_key)
    task = teacher.call("GET", f"/v1/tasks/{config.task}")
    prompts = task["prompts"]
    train, held_out = prompts[: config.train_prompts], prompts[-config.eval_prompts:]
    reward = build_reward(task["reward"])
    started = time.monotonic()

    console.rule(f"1. teacher: critique→revise job, {len(train)} prompts × {config.chains} chains")
    job = teacher.call("POST", "/v1/jobs", json={
        "task": config.task, "prompts": train, "chains": config.chains, "acceptance": config.acceptance,
        "max_tokens": config.max_tokens, "seed": config.seed,
    })
    job = _watch("sampling", lambda: teacher.call("GET", f"/v1/jobs/{job['id']}"),
                 lambda s: (s["progress"]["done"], s["progress"]["total"], f"({s['progress']['accepted']} accepted)"))
    console.print(f"job {job['id']}: {job['progress']['accepted']} accepted chains of {job['progress']['total'] * config.chains}")

    console.rule("2. trainer: distil a LoRA student from the accepted pairs")
    run = teacher.call("POST", "/admin/distillations", json={
        "task": config.task, "jobs": [job["id"]], "eval_prompts": held_out, "max_steps": config.max_steps, "seed": config.seed,
    })
    run = _watch("training", lambda: teacher.call("GET", f"/admin/distillations/{run['id']}"),
                 lambda s: (s.get("progress", {}).get("step", 0), s.get("progress", {}).get("total", 0),
                            f"loss {s['progress']['loss']:.3f}" if s.get("progress", {}).get("loss") is not None else ""), interval=3)
    students = teacher.call("GET", "/admin/students")["data"]
    new_student = next(s for s in students if s["id"] == run["student_id"])

    console.rule("3. promote the student; the student service hot-swaps to it")
    teacher.call("POST", f"/admin/students/{new_student['id']}/promote")
    served = _wait_for_model(student, new_student)

    console.rule("4. held-out prompts: base model vs teacher revision vs student")
    base_model = served["base"]
    base_answers = _answers(student, base_model, held_out, config)
    student_answers = _answers(student, served["student"], held_out, config)
    revised = teacher.call("POST", "/v1/critique-revise", json={"task": config.task, "prompts": held_out[:8], "max_tokens": config.max_tokens, "seed": config.seed, "store": False})["results"]
    base_rewards = reward.score(held_out, base_answers)
    student_rewards = reward.score(held_out, student_answers)
    teacher_rewards = [result["final"]["reward"] for result in revised]

    summary = {
        "base": _stats(base_rewards), "teacher_revision": _stats(teacher_rewards), "student": _stats(student_rewards),
        "improved_share": sum(s > b for s, b in zip(student_rewards, base_rewards)) / len(held_out),
        "pairs": job["progress"]["accepted"], "seconds": round(time.monotonic() - started),
    }
    _print_comparison(summary, held_out, base_answers, student_answers, base_rewards, student_rewards)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    report = config.out_dir / "report.png"
    report.write_bytes(teacher.call("GET", f"/admin/distillations/{run['id']}/report.png"))
    console.print(f"\nreport image: {report.resolve()}\nstudent artifacts: {new_student.get('adapter_path') or new_student.get('merged_path')}")
    console.print(f"the demo took {summary['seconds']} s")
    return summary


def _wait_for_model(student: Client, new_student: dict, timeout: float = 300) -> dict:
    """Wait until the student service serves the promoted student; return its and the base's ids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = student.call("GET", "/v1/models")["data"]
        served = next((m["id"] for m in models if m.get("student_id") == new_student["id"]), None)
        base = next((m["id"] for m in models if m.get("dsc_kind") == "base"), None)
        if served and base:
            return {"student": served, "base": base}
        time.sleep(2)
    raise DemoError("the student service did not switch to the promoted student in time")


def _answers(student: Client, model: str, prompts: list[str], config: DemoConfig) -> list[str]:
    """All prompts at once, as concurrent clients: the student service batches them together."""
    def ask(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": config.max_tokens, "temperature": 0.0, "seed": config.seed}
        return student.call("POST", "/v1/chat/completions", json=body)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(max_workers=min(16, len(prompts))) as pool:
        return list(pool.map(ask, prompts))


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3), "n": len(values)}


def _print_comparison(summary, prompts, base_answers, student_answers, base_rewards, student_rewards) -> None:
    table = Table(title="reward on held-out prompts (higher = more positive)")
    for column in ("model", "mean", "median", "n"):
        table.add_column(column, justify="right")
    for name, key in (("base model", "base"), ("teacher (critique→revise)", "teacher_revision"), ("distilled student", "student")):
        stats = summary[key]
        table.add_row(name, f"{stats['mean']:.3f}", f"{stats['median']:.3f}", str(stats["n"]))
    console.print(table)
    console.print(f"student beats base on {summary['improved_share']:.0%} of held-out prompts; trained on {summary['pairs']} accepted pairs")
    examples = Table(title="examples", show_lines=True)
    for column in ("prompt", "base", "student"):
        examples.add_column(column, overflow="fold", max_width=50)
    for i in range(min(3, len(prompts))):
        examples.add_row(prompts[i], f"[{base_rewards[i]:+.2f}] {_clip(base_answers[i])}", f"[{student_rewards[i]:+.2f}] {_clip(student_answers[i])}")
    console.print(examples)


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"
