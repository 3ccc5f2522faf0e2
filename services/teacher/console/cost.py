"""Cost: per task, the tokens the teacher generated to make the training data and the tokens the
student spends per answer. The database records no token counts: both are counted here by
re-tokenising stored texts, and the page says so."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.teacher.console.queries import COST_SAMPLE, task_costs, token_counter
from services.teacher.console.web import Admin, Db, State, render

router = APIRouter()


@router.get("/cost", response_class=HTMLResponse)
def cost(request: Request, _user: Admin, session: Db, state: State) -> HTMLResponse:
    settings = state.settings
    store = settings.resolved_model_store
    teacher_count, teacher_how = token_counter(settings.teacher_model, store)
    student_hows: set[str] = set()

    def student_count(base_model: str, text: str) -> int:
        count, how = token_counter(base_model, store)
        student_hows.add(how)
        return count(text)

    rows = task_costs(session, teacher_count, student_count)
    return render(request, "cost.html", rows=rows, teacher_how=teacher_how, student_hows=sorted(student_hows), sample=COST_SAMPLE)
