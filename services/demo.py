"""`dsc demo`: the main job end to end, as a client of the running services over HTTP.

Sample a sentiment job on the teacher over the task's training prompts, distil a student from its
accepted pairs (the trainer evaluates it against its base on the task's separately written
evaluation set, K samples per prompt), have the teacher's critique→revise chain answer the same
evaluation prompts, print every figure with its 95% interval, promote the student if its gain is
significant, and show a few answers of base and student through the student service.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.engines.openai_engine import parse_retry_after

console = Console()


@dataclass
class DemoConfig:
    task: str = "sentiment"
    train_prompts: int = 160  # of the task's training set
    eval_prompts: int = 48  # of the task's evaluation set (written apart from the training prompts)
    samples: int = 4  # answers per evaluation prompt and system
    chains: int = 2
    max_tokens: int = 96
    max_steps: int | None = None  # None: the trainer's default epochs
    min_reward: float | None = None  # None: the task's reward floor for training pairs
    acceptance: str = "improve"
    seed: int = 0
    out_dir: Path = Path("demo-output")
    # Promote a student its gate refuses, so a run too small to judge (a test's) still shows steps 4-5.
    force_promotion: bool = False


class DemoError(RuntimeError):
    pass


class Client:
    """Thin httpx wrapper that turns error bodies into DemoError with the service's message."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=600)

    def call(self, method: str, path: str, *, busy_retries: int = 0, **kwargs) -> Any:
        """`busy_retries`: how many 429s (the service busy, e.g. its synchronous slots taken) to wait out."""
        try:
            response = self.http.request(method, path, **kwargs)
            for _ in range(busy_retries):
                if response.status_code != 429:
                    break
                time.sleep(parse_retry_after(response.headers) or 5)
                response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:  # not running, wrong URL, connection cut
            raise DemoError(f"{method} {self.http.base_url.join(path)}: {type(error).__name__}: {error}") from error
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
    from services.trainer.evaluation_figures import figures_table

    teacher = Client(teacher_url, admin_token)
    student = Client(student_url, client_key)
    task = teacher.call("GET", f"/v1/tasks/{config.task}")
    train, held_out = task["prompts"][: config.train_prompts], task["eval_prompts"][: config.eval_prompts]
    started = time.monotonic()

    console.rule(f"1. teacher: critique→revise job, {len(train)} prompts × {config.chains} chains")
    job = teacher.call("POST", "/v1/jobs", json={
        "task": config.task, "prompts": train, "chains": config.chains, "acceptance": config.acceptance,
        "max_tokens": config.max_tokens, "seed": config.seed,
    })
    job = _watch("sampling", lambda: teacher.call("GET", f"/v1/jobs/{job['id']}"),
                 lambda s: (s["progress"]["done"], s["progress"]["total"], f"({s['progress']['accepted']} accepted)"))
    console.print(f"job {job['id']}: {job['progress']['accepted']} accepted chains of {job['progress']['total'] * config.chains}")

    console.rule("2. trainer: distil a LoRA student, evaluate it against its base")
    body = {"task": config.task, "jobs": [job["id"]], "eval_prompts": held_out, "eval_samples": config.samples,
            "eval_max_tokens": config.max_tokens, "seed": config.seed}
    for key in ("max_steps", "min_reward"):
        if getattr(config, key) is not None:
            body[key] = getattr(config, key)
    run = teacher.call("POST", "/admin/distillations", json=body)
    run = _watch("training", lambda: teacher.call("GET", f"/admin/distillations/{run['id']}"), _training_progress, interval=3)
    figures = run["metrics"]["eval"]

    console.rule(f"3. teacher: critique→revise chains on the {len(held_out)} evaluation prompts × {config.samples}")
    teacher_answers = _teacher_answers(teacher, config, held_out)
    _add_teacher(figures, task, held_out, teacher_answers, config.seed)
    console.print(figures_table(figures, title=f"{config.task}: the evaluation set (higher = better)"))
    train_figures = run["metrics"]["train"]
    console.print(f"trained on {train_figures['pairs']} pairs ({job['progress']['accepted']} accepted chains), "
                  f"{train_figures['steps']} steps")
    console.print(COMPARISONS.format(scorer=(figures.get("second_opinion") or {}).get("scorer", "none for this task")))

    console.rule("4. promote the student if its gate allows it; the student service hot-swaps to it")
    new_student = next(s for s in teacher.call("GET", "/admin/students")["data"] if s["id"] == run["student_id"])
    summary = {"figures": {k: v for k, v in figures.items() if k not in ("per_prompt", "examples")}, "pairs": train_figures["pairs"],
               "accepted_chains": job["progress"]["accepted"], "promotable": new_student["promotable"], "gate": new_student["gate"]}
    forced = not new_student["promotable"]
    if forced and not config.force_promotion:
        console.print(f"[yellow]not promoted: {new_student['gate']}[/yellow]\nThe active student stays as it is; "
                      "`dsc demo --force-promotion` serves this one anyway.")
        return _finish(summary, teacher, run, new_student, config, started, promoted=False)
    console.print(f"[yellow]promoting with force: {new_student['gate']}[/yellow]" if forced else f"promotable: {new_student['gate']}")
    teacher.call("POST", f"/admin/students/{new_student['id']}/promote",
                 params={"force": "true", "reason": "dsc demo --force-promotion"} if forced else None)
    served = _wait_for_model(student, new_student)
    shown = held_out[:3]
    sampling = figures["sampling"]  # the evaluation's own: examples drawn as the figures above were
    base_answers = _answers(student, served["base"], shown, config, sampling)
    student_answers = _answers(student, served["student"], shown, config, sampling)
    _print_examples(shown, base_answers, student_answers, sampling)

    console.rule("5. what an answer costs a client: student, base and the teacher's chain through the services")
    cost = _served_cost(teacher_url, student_url, client_key, config, held_out, served, sampling)

    summary.update(forced_promotion=forced, served_cost=cost)
    return _finish(summary, teacher, run, new_student, config, started, promoted=True)


def _finish(summary: dict, teacher: Client, run: dict, new_student: dict, config: DemoConfig, started: float, *, promoted: bool) -> dict:
    summary.update(promoted=promoted, seconds=round(time.monotonic() - started))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    report = config.out_dir / "report.png"
    report.write_bytes(teacher.call("GET", f"/admin/distillations/{run['id']}/report.png"))
    console.print(f"\nreport image: {report.resolve()}\nstudent artifacts: {new_student.get('adapter_path') or new_student.get('merged_path')}")
    console.print(f"the demo took {summary['seconds']} s")
    return summary


def _training_progress(state: dict) -> tuple[int, int, str]:
    progress = state.get("progress", {})
    phase = progress.get("phase", "")
    note = f"loss {progress['loss']:.3f}" if progress.get("loss") is not None and phase == "training" else phase
    if (passing := (progress.get("passes") or {}).get(phase)) is not None:  # a preference pass over every pair, between steps
        note = f"{phase} {passing['done']}/{passing['total']} pairs"
    return progress.get("step", 0), progress.get("total", 0), note


COMPARISONS = """\
[bold]Three comparisons decide the promotion.[/bold]
[bold]Against the base:[/bold] the student must raise the task's reward on prompts it never saw, by more than noise: the 95% interval of student − base must exclude 0. That gain is what distillation is for.
[bold]Against the incumbent:[/bold] where the task already has an active student, it answers the same prompts with the same draws. A new student significantly worse than it is not promoted, so a worse model never replaces a better one.
[bold]Against a second opinion:[/bold] a scorer that never picked training data ({scorer}) scores every answer too, and the answers are checked for repetition and sameness. A student that gains on the reward but loses on the second opinion, or degenerates, has learned the scorer rather than the task and is not promoted."""


def _teacher_answers(teacher: Client, config: DemoConfig, prompts: list[str]) -> list[list[dict]]:
    """K chains per prompt through the teacher's synchronous API, not stored: calls of 8 prompts, two
    in flight (the teacher's default synchronous slots), so its engine starts one call's chains while
    the other's last ones finish (a call beyond the teacher's slots waits out its 429). Each prompt's
    final answers, as {"text", "reward"}."""
    chunk, in_flight = 8, 2
    starts = range(0, len(prompts), chunk)

    def ask(start: int) -> list[dict]:
        return teacher.call("POST", "/v1/critique-revise", busy_retries=60, json={
            "task": config.task, "prompts": prompts[start:start + chunk], "chains": config.samples,
            "acceptance": config.acceptance, "max_tokens": config.max_tokens, "seed": config.seed + start, "store": False})["results"]

    answers: dict[int, list[dict]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar, ThreadPoolExecutor(max_workers=in_flight) as pool:
        handle = bar.add_task("teacher chains", total=len(prompts))
        for start, results in zip(starts, pool.map(ask, starts)):
            for result in results:
                answers.setdefault(start + result["prompt_index"], []).append(result["final"])
            bar.update(handle, advance=len(prompts[start:start + chunk]))
    return [answers[i] for i in range(len(prompts))]


def _add_teacher(figures: dict, task: dict, prompts: list[str], answers: list[list[dict]], seed: int) -> None:
    """The teacher's chain beside base and student: its reward (as the teacher scored it) and its
    second opinion (scored here, by the task's second scorer), each with its interval."""
    from services.trainer.evaluation_figures import score
    from shared import stats
    from shared.rewards import build_reward

    per_prompt = {row["prompt"]: row for row in figures["per_prompt"]}
    base = [[per_prompt[p]["base"]] for p in prompts]
    rewards = [[answer["reward"] for answer in group] for group in answers]
    figures["systems"]["teacher"] = stats.mean(rewards, seed=seed).as_dict(null=None)
    figures["teacher_minus_base"] = stats.difference(rewards, base, seed=seed).as_dict()
    figures["gain_share"] = stats.gain_share([[per_prompt[p]["student"]] for p in prompts], base, rewards, seed=seed).as_dict(null=None)
    if task.get("second_opinion") and "second_opinion" in figures:
        texts = [[answer["text"] for answer in group] for group in answers]
        second = score(build_reward(task["second_opinion"]), prompts, texts).rewards
        figures["second_opinion"]["systems"]["teacher"] = stats.mean(second, seed=seed).as_dict(null=None)


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


def _answers(student: Client, model: str, prompts: list[str], config: DemoConfig, sampling: dict) -> list[str]:
    """All prompts at once, as concurrent clients: the student service batches them together."""
    def ask(prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": sampling["max_tokens"],
                "temperature": sampling["temperature"], "seed": config.seed}
        return student.call("POST", "/v1/chat/completions", json=body)["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(max_workers=min(16, len(prompts))) as pool:
        return list(pool.map(ask, prompts))


def _print_examples(prompts, base_answers, student_answers, sampling: dict) -> None:
    how = "greedy" if not sampling["temperature"] else f"sampled at temperature {sampling['temperature']}, as the evaluation"
    examples = Table(title=f"answers through the student service ({how})", show_lines=True)
    for column in ("prompt", "base", "student"):
        examples.add_column(column, overflow="fold", max_width=50)
    for prompt, base, student in zip(prompts, base_answers, student_answers):
        examples.add_row(prompt, _clip(base), _clip(student))
    console.print(examples)


def _served_cost(teacher_url: str, student_url: str, client_key: str, config: DemoConfig, prompts: list[str],
                 served: dict, sampling: dict) -> dict:
    """A short run of bench/served_cost.py's measurement (services/served_cost.py): seconds per answer of
    the student, the base model and the teacher's 1-step chain, at 1 and 8 clients, same prompts and limits."""
    from services.served_cost import CostSetup, Side, measure, ratios, summaries

    setup = CostSetup(teacher_url, student_url, client_key, config.task, prompts, max_tokens=sampling["max_tokens"],
                      temperature=sampling["temperature"])
    sides = [Side("student", model=served["student"]), Side("base", model=served["base"]), Side("chain", chains=1)]
    with console.status("measuring") as status:
        results = measure(setup, sides, {1: 3, 8: 8}, on_step=lambda step: status.update(f"measuring {step}"))
    table = Table(title=f"served cost per answer ({sampling['max_tokens']}-token limit, over HTTP, this machine, one run)")
    for column in ("clients", "student s/answer", "base s/answer", "chain s/answer", "chain ÷ student", "student decode tok/s ÷ base"):
        table.add_column(column, justify="right")
    cost = {}
    for clients, summary in summaries(results).items():
        cost[clients] = {**{name: row["s_per_answer"] for name, row in summary.items()}, **ratios(summary, "student", "base", ["chain"])}
        table.add_row(str(clients), *(f"{cost[clients][k]:.2f}" if cost[clients][k] is not None else "-" for k in
                                      ("student", "base", "chain", "chain/student", "student/base decode_tokens_per_s")))
    console.print(table)
    console.print("bench/served_cost.py measures the same at 1, 8 and 32 clients over alternating rounds (bench/RESULTS.md).")
    return cost


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"
