"""Students: the registry with each student's evaluation and the active one per task; promote or
roll back (a confirmation page first); a playground that asks the student service's "base" and a
student the same prompt (DSC_STUDENT_URL says where the student service is)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from services.teacher.console.web import Admin, AdminPost, Db, State, redirect, render
from services.teacher.routes import students as students_api
from shared.errors import DscError, NotFound
from shared.web.auth import Scope

router = APIRouter()

PLAYGROUND_TIMEOUT_S = 120.0
MAX_PLAYGROUND_TOKENS = 256


def _registry(session) -> tuple[list[dict], dict[str, dict]]:
    """Every student (newest first) and, per task, its active student and the one a roll back returns to."""
    students = students_api.list_students(_scope=Scope.ADMIN, session=session, task=None, active=None, limit=1000)["data"]
    tasks: dict[str, dict] = {}
    for student in students:
        entry = tasks.setdefault(student["task"], {"active": None, "previous": None})
        if student["active"]:
            entry["active"] = student
    for task, entry in tasks.items():
        earlier = [s for s in students if s["task"] == task and not s["active"] and s["promoted_at"] is not None]
        entry["previous"] = max(earlier, key=lambda s: s["promoted_at"], default=None)
    return students, tasks


@router.get("/students", response_class=HTMLResponse)
def student_list(request: Request, _user: Admin, session: Db) -> HTMLResponse:
    students, tasks = _registry(session)
    return render(request, "students.html", students=students, tasks=tasks, models={s["id"]: s["model"] for s in students})


def _confirm_page(request: Request, session, student_id: str, *, error: str | None = None, code: int = 200) -> HTMLResponse:
    students, tasks = _registry(session)
    student = next((s for s in students if s["id"] == student_id), None)
    if student is None:
        raise NotFound(f"no student {student_id!r}", param="id")
    entry = tasks[student["task"]]
    rollback = entry["previous"] is not None and entry["previous"]["id"] == student_id
    return render(request, "promote.html", code=code, student=student, current=entry["active"], rollback=rollback, error=error)


@router.get("/students/{student_id}/promote", response_class=HTMLResponse)
def promote_confirm(request: Request, student_id: str, _user: Admin, session: Db) -> HTMLResponse:
    return _confirm_page(request, session, student_id)


@router.post("/students/{student_id}/promote", response_class=HTMLResponse)
def promote(request: Request, student_id: str, _user: AdminPost, state: State,
            force: Annotated[bool, Form()] = False, reason: Annotated[str, Form(max_length=500)] = "") -> Response:
    try:
        students_api.promote_student(student_id=student_id, _scope=Scope.ADMIN, state=state, force=force, reason=reason.strip() or None)
    except DscError as error:
        with state.sessions() as session:
            return _confirm_page(request, session, student_id, error=error.message, code=error.status_code)
    return redirect("/students")


# --- playground -----------------------------------------------------------------------------------


def _served_names(session) -> list[str]:
    """Names the student service answers to: 'student' (the newest promotion) and each task with an active student."""
    _students, tasks = _registry(session)
    return ["student", *sorted(task for task, entry in tasks.items() if entry["active"])]


def _ask(client: httpx.Client, model: str, prompt: str, max_tokens: int, temperature: float) -> dict[str, Any]:
    try:
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": temperature})
    except httpx.HTTPError as error:
        return {"model": model, "error": f"the student service did not answer: {type(error).__name__}: {error}"}
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        return {"model": model, "error": f"{response.status_code}: {message or response.text[:300]}"}
    return {"model": body.get("model", model), "answer": body["choices"][0]["message"]["content"],
            "tokens": (body.get("usage") or {}).get("completion_tokens")}


@router.get("/playground", response_class=HTMLResponse)
def playground_form(request: Request, _user: Admin, session: Db, state: State) -> HTMLResponse:
    return render(request, "playground.html", names=_served_names(session), student_url=state.settings.student.resolved_url,
                  prompt="", model="student", max_tokens=64, temperature=0.0, answers=None)


@router.post("/playground", response_class=HTMLResponse)
def playground(request: Request, user: AdminPost, state: State, prompt: Annotated[str, Form(min_length=1, max_length=8000)],
               model: Annotated[str, Form(max_length=200)] = "student",
               max_tokens: Annotated[int, Form(ge=1, le=MAX_PLAYGROUND_TOKENS)] = 64,
               temperature: Annotated[float, Form(ge=0, le=2)] = 0.0) -> HTMLResponse:
    """One prompt to the student service's base model and to `model`, at once; both answers shown."""
    headers = {"Authorization": f"Bearer {user.token}"} if user.token else {}
    with httpx.Client(base_url=state.settings.student.resolved_url, headers=headers, timeout=PLAYGROUND_TIMEOUT_S) as client, \
            ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda name: _ask(client, name, prompt, max_tokens, temperature), ["base", model]))
    with state.sessions() as session:  # not held open while the student answers
        names = _served_names(session)
    return render(request, "playground.html", names=names, student_url=state.settings.student.resolved_url,
                  prompt=prompt, model=model, max_tokens=max_tokens, temperature=temperature, answers=answers)
