"""Pairs: a job's chains side by side (prompt, first answer, critiques, revisions, rewards,
accepted), filtered; review excludes an accepted pair from training with a reason, and undoes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from services.teacher.console.forms import describe, parse
from services.teacher.console.queries import ChainFilter, browse_chains
from services.teacher.console.web import Admin, AdminPost, Db, State, number, pick, redirect, render
from services.teacher.protocol import MAX_EXCLUSION_REASON, Exclusion
from services.teacher.routes import pairs as pairs_api, tasks as tasks_api
from shared.web.auth import Scope

router = APIRouter()

PAGE = 20
YES_NO = {"yes": True, "no": False}


@router.get("/pairs", response_class=HTMLResponse)
def pair_list(request: Request, _user: Admin, session: Db, task: str | None = None, job: str | None = None,
              accepted: str | None = None, min_gain: str | None = None, excluded: str | None = None,
              before: int | None = None) -> HTMLResponse:
    where = ChainFilter(task=task or None, job=job or None, accepted=YES_NO.get(pick(accepted, ("yes", "no")) or ""),
                        min_gain=number(min_gain, "min_gain"), excluded=YES_NO.get(pick(excluded, ("yes", "no")) or ""))
    rows, next_before = browse_chains(session, where, before=before, limit=PAGE)
    filters = {"task": where.task or "", "job": where.job or "", "accepted": accepted or "", "min_gain": min_gain or "",
               "excluded": excluded or ""}
    return render(request, "pairs.html", rows=rows, next_before=next_before, filters=filters, here=str(request.url.path) +
                  (f"?{request.url.query}" if request.url.query else ""), tasks=tasks_api.list_all(_scope=Scope.ADMIN, session=session).data,
                  max_reason=MAX_EXCLUSION_REASON)


def _back(back: str) -> str:
    """Where to return after a review action: the pairs page the form was on, nowhere else."""
    path = back.removeprefix("/console")
    return path if path.startswith("/pairs") and "//" not in path else "/pairs"


@router.post("/pairs/{pair_id}/exclude")
def pair_exclude(pair_id: int, _user: AdminPost, state: State, reason: Annotated[str, Form(max_length=4000)] = "",
                 back: Annotated[str, Form(max_length=2000)] = "/pairs") -> Response:
    exclusion = parse(Exclusion, describe(Exclusion, ["reason"]), {"reason": reason})  # 400 naming `reason`, as the API's 422
    pairs_api.exclude(pair_id=pair_id, exclusion=exclusion, _scope=Scope.ADMIN, state=state)
    return redirect(_back(back) + f"#pair-{pair_id}")


@router.post("/pairs/{pair_id}/include")
def pair_include(pair_id: int, _user: AdminPost, state: State, back: Annotated[str, Form(max_length=2000)] = "/pairs") -> Response:
    pairs_api.include(pair_id=pair_id, _scope=Scope.ADMIN, state=state)
    return redirect(_back(back) + f"#pair-{pair_id}")
