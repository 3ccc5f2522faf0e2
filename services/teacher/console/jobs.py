"""Jobs: the list with a form to queue one, and a job's page with its live progress, failures and
cancel. Reads and writes go through the JSON API's own route functions."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from services.teacher.console.forms import describe, parse
from services.teacher.console.queries import failed_batches, job_figures
from services.teacher.console.web import Admin, AdminPost, Db, State, form_values, pick, redirect, render
from services.teacher.routes import jobs as jobs_api, tasks as tasks_api
from shared.errors import DscError
from shared.sampling_protocol import SampleRequest
from shared.web.auth import Scope

router = APIRouter()

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
JOB_FORM = ["task", "prompts", "limit", "chains", "steps", "acceptance", "temperature", "max_tokens", "seed"]


def _list_page(request: Request, user, session, *, task: str | None, status: str | None, form: dict, error: str | None,
               code: int = 200) -> HTMLResponse:
    listed = jobs_api.list_jobs(caller=user.caller, session=session, status=status, kind=None, task=task, limit=100).data
    tasks = tasks_api.list_all(_scope=Scope.ADMIN, session=session).data
    return render(request, "jobs.html", code=code, jobs=listed, figures=job_figures(session, [job.id for job in listed]),
                  tasks=tasks, statuses=STATUSES, task=task, status=status, fields=describe(SampleRequest, JOB_FORM),
                  form=form, error=error)


@router.get("/jobs", response_class=HTMLResponse)
def job_list(request: Request, user: Admin, session: Db, task: str | None = None, status: str | None = None) -> HTMLResponse:
    return _list_page(request, user, session, task=task or None, status=pick(status, STATUSES), form={}, error=None)


@router.post("/jobs", response_class=HTMLResponse)
async def job_submit(request: Request, user: AdminPost, state: State) -> Response:
    return await run_in_threadpool(_submit, request, user, state, await form_values(request))


def _submit(request: Request, user, state, form: dict[str, str]) -> Response:
    try:
        sample = parse(SampleRequest, describe(SampleRequest, JOB_FORM), form)
        created = jobs_api.submit(request=sample, caller=user.caller, state=state)
    except DscError as error:
        with state.sessions() as session:
            return _list_page(request, user, session, task=None, status=None, form=form, error=error.message, code=error.status_code)
    return redirect(f"/jobs/{json.loads(created.body)['id']}")


def _job_context(session, user, job_id: str) -> dict:
    job = jobs_api.show(job_id=job_id, caller=user.caller, session=session)
    return {"job": job, "figures": job_figures(session, [job.id]).get(job.id), "failures": failed_batches(session, job.id),
            "final": job.status in FINAL}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, user: Admin, session: Db) -> HTMLResponse:
    return render(request, "job.html", **_job_context(session, user, job_id))


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(request: Request, job_id: str, user: Admin, session: Db) -> HTMLResponse:
    """The job page's changing part, which the page fetches every second until the job ends."""
    return render(request, "_job_live.html", **_job_context(session, user, job_id))


@router.post("/jobs/{job_id}/cancel")
def job_cancel(job_id: str, user: AdminPost, state: State) -> Response:
    jobs_api.cancel(job_id=job_id, caller=user.caller, state=state)
    return redirect(f"/jobs/{job_id}")
