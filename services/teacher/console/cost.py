"""Cost: per task, the tokens the teacher generated to make the training data and the tokens the
student spends per answer. The database records no token counts: both are counted here by
re-tokenising stored texts, and the page says so. Beside the estimate, the measured served time
per answer: the teacher's synchronous chains from this process's own metrics, the student's
completions from the student service's /metrics."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.teacher.console.queries import COST_SAMPLE, task_costs, token_counter
from services.teacher.console.web import Admin, Db, State, render

router = APIRouter()
METRICS_TIMEOUT_S = 2.0  # the page renders without the measured column rather than wait on a student away


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
    served, served_error = student_seconds_per_answer(settings.student.resolved_url)
    return render(request, "cost.html", rows=rows, teacher_how=teacher_how, student_hows=sorted(student_hows), sample=COST_SAMPLE,
                  chain_served=state.metrics.sync_seconds_per_answer(), student_served=served, served_error=served_error,
                  student_url=settings.student.resolved_url)


def student_seconds_per_answer(student_url: str) -> tuple[dict[str, float], str | None]:
    """({model: mean seconds per chat completion}, None) from the student service's latency
    histogram since it started, or ({}, why not) when its /metrics cannot be read now."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = httpx.get(f"{student_url}/metrics", timeout=METRICS_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as error:
        return {}, f"{type(error).__name__}"
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "dsc_student_completion_seconds":
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if sample.name.endswith("_sum"):
                sums[model] = sample.value
            elif sample.name.endswith("_count"):
                counts[model] = sample.value
    return {model: sums[model] / count for model, count in counts.items() if count and model in sums}, None
