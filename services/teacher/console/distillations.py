"""Distillations: start one from a form (the API's DistillationConfig, defaults shown), watch its
progress and loss curve, read its evaluation (base vs student vs teacher, 95% intervals), cancel."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Sequence

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from services.teacher.console import charts
from services.teacher.console.forms import FormField, describe, parse
from services.teacher.console.web import Admin, AdminPost, Db, State, form_values, pick, redirect, render, teacher_state
from services.teacher.protocol import TaskSummary
from services.teacher.routes import distillations as runs_api, jobs as jobs_api, tasks as tasks_api
from shared.distillation.config import DistillationConfig
from shared.distillation.runs import deployment_defaults
from shared.errors import DscError
from shared.tasks import TASK_RECIPE_FIELDS
from shared.web.auth import Scope

router = APIRouter()

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
RUN_FORM = ["task", "jobs", "owners", "name", "objective", "dpo_beta", "min_margin", "method", "max_steps", "epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha",
            "max_seq_len", "min_reward_gain", "min_reward", "max_repetition", "truncated_answers", "best_per_prompt", "acceptance", "held_out_fraction",
            "max_eval_prompts", "eval_samples", "eval_max_tokens", "eval_teacher", "collapse_check", "auto_promote", "merge"]


class LossTrail:
    """The (step, loss) points the console has seen of running runs: the worker stores only the
    latest loss until the run ends (then metrics.train.loss_curve has every step). Bounded."""

    def __init__(self, runs: int = 32, points: int = 2000) -> None:
        self._runs: OrderedDict[str, dict[int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_runs, self.max_points = runs, points

    def see(self, run_id: str, progress: dict) -> list[list[float]]:
        step, loss = progress.get("step"), progress.get("loss")
        with self._lock:
            seen = self._runs.setdefault(run_id, {})
            self._runs.move_to_end(run_id)
            if isinstance(step, int) and isinstance(loss, (int, float)) and step > 0 and len(seen) < self.max_points:
                seen[step] = float(loss)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            return [[s, seen[s]] for s in sorted(seen)]


TRAIL = LossTrail()


def _fields(request: Request, tasks: Sequence[TaskSummary] = ()) -> list[FormField]:
    """The run form. A recipe field a task may set (TASK_RECIPE_FIELDS) starts blank: blank takes
    the task's default, else the deployment's or the API's, as for a JSON body that leaves it out."""
    deployment = deployment_defaults(teacher_state(request).settings)
    fields = []
    for field in describe(DistillationConfig, RUN_FORM, words=("jobs", "owners")):
        if field.name in TASK_RECIPE_FIELDS:
            fallback = deployment.get(field.name, field.default)
            setters = ", ".join(f"{task.name}: {task.distillation[field.name]}" for task in tasks if field.name in task.distillation)
            api_help = field.help.split(" Unset: ")[0]  # the API's "Unset:" sentence; the form's own names each task's value
            field = replace(field, default=None, optional=True, help=f"{api_help} Blank: the task's default"
                            f"{f' ({setters})' if setters else ''}, else {'none' if fallback is None else fallback}.")
        fields.append(field)
    return fields


def _list_page(request: Request, user, session, *, status: str | None, form: dict, error: str | None, code: int = 200) -> HTMLResponse:
    runs = runs_api.list_runs(_scope=Scope.ADMIN, session=session, status=status, task=None, limit=100)["data"]
    finished = jobs_api.list_jobs(caller=user.caller, session=session, status="succeeded", kind=None, task=None, limit=10).data
    tasks = tasks_api.list_all(_scope=Scope.ADMIN, session=session).data
    return render(request, "distillations.html", code=code, runs=runs, statuses=STATUSES, status_filter=status, finished_jobs=finished,
                  tasks=tasks, fields=_fields(request, tasks), form=form, error=error)


@router.get("/distillations", response_class=HTMLResponse)
def run_list(request: Request, user: Admin, session: Db, status: str | None = None, task: str | None = None,
             jobs: str | None = None) -> HTMLResponse:
    """The runs, and the form; ?task=&jobs= fill it in (the job page's "distil" link)."""
    form = {key: value for key, value in (("task", task), ("jobs", jobs)) if value}
    return _list_page(request, user, session, status=pick(status, STATUSES), form=form, error=None)


@router.post("/distillations", response_class=HTMLResponse)
async def run_submit(request: Request, user: AdminPost, state: State) -> Response:
    return await run_in_threadpool(_submit, request, user, state, await form_values(request))


def _submit(request: Request, user, state, form: dict[str, str]) -> Response:
    try:
        config = parse(DistillationConfig, _fields(request), form)
        created = runs_api.create(config=config, _scope=Scope.ADMIN, state=state)
    except DscError as error:
        with state.sessions() as session:
            return _list_page(request, user, session, status=None, form=form, error=error.message, code=error.status_code)
    return redirect(f"/distillations/{json.loads(created.body)['id']}")


def _run_context(session, run_id: str) -> dict:
    run = runs_api.show(run_id=run_id, _scope=Scope.ADMIN, session=session)
    train = (run["metrics"] or {}).get("train") or {}
    evaluation = (run["metrics"] or {}).get("eval")
    points = train.get("loss_curve") or TRAIL.see(run["id"], run["progress"] or {})
    return {"run": run, "final": run["status"] in FINAL, "loss_chart": charts.loss_curve(points), "evaluation": evaluation,
            "eval_chart": charts.intervals(evaluation["systems"]) if evaluation and "systems" in evaluation else None}


@router.get("/distillations/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, _user: Admin, session: Db) -> HTMLResponse:
    return render(request, "distillation.html", **_run_context(session, run_id))


@router.get("/distillations/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, run_id: str, _user: Admin, session: Db) -> HTMLResponse:
    """The run page's changing part, fetched every two seconds until the run ends."""
    return render(request, "_run_live.html", **_run_context(session, run_id))


@router.post("/distillations/{run_id}/cancel")
def run_cancel(run_id: str, _user: AdminPost, state: State) -> Response:
    runs_api.cancel_run(run_id=run_id, _scope=Scope.ADMIN, state=state)
    return redirect(f"/distillations/{run_id}")
