"""POST /v1/critique-revise: the sampler, synchronously, for a handful of prompts."""

from __future__ import annotations

import time

from fastapi import APIRouter

from services.teacher.deps import ReadyState
from services.teacher.limits import check_plan
from shared.engines.base import EngineDead, dead_reason_of
from shared.errors import NotReady, Overloaded
from shared.sampling_protocol import ChainResult, SampleRequest, SampleResponse
from shared.sampling_run import plan_sample, run_plan, store_finished_run
from shared.web.auth import ClientCaller
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/v1", tags=["sampling"], route_class=AuthFirstRoute)


@router.post("/critique-revise", response_model=SampleResponse, responses=error_responses(404, 502, 503))
def critique_revise(request: SampleRequest, caller: ClientCaller, state: ReadyState) -> SampleResponse:
    """Answer, critique, revise and score each prompt now; store the chains (and accepted pairs) as
    a finished job of kind "sync" when `store` is true. A plain `def`: FastAPI runs it in its
    threadpool, so the event loop keeps serving while the engine works. At most
    `teacher.max_concurrent_sync` calls run at once; the next one gets 429 with Retry-After at once.
    A teacher shutting down answers 503 with Retry-After, also to a call it had begun (the
    engine is closed under it, or it stops at its next phase); so does one whose engine dies
    under it (and the teacher acts on the death at once: state.engine_died)."""
    settings = state.settings

    def check_stopping(*_progress) -> None:
        if state.stopping.is_set():
            raise NotReady("the teacher is shutting down; retry shortly")

    check_stopping()
    with state.sessions() as session:
        plan = plan_sample(session, request)
    check_plan(plan, settings, max_prompts=settings.teacher.max_sync_prompts, count_setting="max_sync_prompts")
    if not state.sync_slots.acquire(blocking=False):
        state.metrics.sync_rejected.inc()
        raise Overloaded(
            f"the engine is busy with {settings.teacher.max_concurrent_sync} synchronous calls (max_concurrent_sync); "
            "retry later or submit a job (POST /v1/jobs)",
            retry_after=settings.teacher.sync_retry_after_seconds,
        )
    started = time.perf_counter()
    try:
        with state.metrics.sync_in_flight.track_inprogress():
            with state.sampling_engine(plan.student) as engine:
                chains = run_plan(plan, engine, state.rewards, progress=check_stopping, schedule=settings.teacher.sampler_schedule)
    except Exception as error:
        if plan.student is not None and (reason := state.student_engines.dead_reason(plan.student)) is not None:
            raise EngineDead(f"the engine of student {plan.student} died ({reason}); it starts afresh on the next call") from error
        if (reason := dead_reason_of(error) or state.check_engine()) is not None:
            state.engine_died(reason)
            raise EngineDead(reason) from error
        raise
    finally:
        state.sync_slots.release()
    state.metrics.observe_chains(chains, "sync")
    state.metrics.sync_seconds.labels(plan.task.name).inc(time.perf_counter() - started)
    state.metrics.sync_answers.labels(plan.task.name).inc(len(plan.prompts))
    job_id = None
    if request.store:
        job_id, _recorded = store_finished_run(state.sessions, plan, chains, kind="sync", owner=caller.key_id)
    return SampleResponse(job_id=job_id, results=[ChainResult.from_chain(chain) for chain in chains])
