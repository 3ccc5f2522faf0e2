"""Tasks: list and show presets and custom tasks; admins create custom tasks.

Secrets in a task's reward spec (an http reward's headers, query values of its URL) are
write-only: every answer shows them as "<redacted>" (shared.rewards.public_reward)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from services.teacher.deps import DbSession, State
from services.teacher.limits import check_prompts
from services.teacher.protocol import TaskList, TaskSummary
from shared.errors import DscError, InvalidRequest
from shared.rewards import check_reward
from shared.tasks import TaskSpec, create_task, get_task, list_tasks
from shared.web.auth import AdminScope, ClientScope
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], route_class=AuthFirstRoute,
                   responses=error_responses(503))


@router.get("", response_model=TaskList)
def list_all(_scope: ClientScope, session: DbSession) -> TaskList:
    return TaskList(data=[TaskSummary.of(spec) for spec in list_tasks(session)])


@router.get("/{name}", response_model=TaskSpec, responses=error_responses(404))
def show(name: str, _scope: ClientScope, session: DbSession) -> TaskSpec:
    return get_task(session, name).public()


@router.post("", response_model=TaskSpec, status_code=201, responses=error_responses(409))
async def create(spec: TaskSpec, _scope: AdminScope, state: State) -> TaskSpec:
    """Create a custom task. The reward spec was checked while parsing the body (fields, installed
    packages); here an http reward's target is checked against the operator's network policy and
    the reward model is built once, so a spec that cannot load fails now rather than in the first job."""
    if spec.builtin:
        raise InvalidRequest("builtin is set by the service (presets only); omit it", param="builtin")
    check_prompts(spec.prompts, state.settings, max_prompts=state.settings.teacher.max_job_prompts, count_setting="max_job_prompts")
    check_prompts(spec.eval_prompts, state.settings, max_prompts=state.settings.teacher.max_job_prompts, count_setting="max_job_prompts")
    network = state.rewards.network if state.rewards is not None else state.settings.network_policy()
    await run_in_threadpool(check_reward, spec.reward, network=network)  # resolves the scorer's host: off the event loop
    if state.rewards is not None:
        try:
            await run_in_threadpool(state.rewards.get, spec.reward)
        except DscError:
            raise
        except Exception as error:
            raise InvalidRequest(f"reward spec could not be built: {type(error).__name__}: {error}", param="reward") from None

    def _store() -> TaskSpec:
        with state.sessions() as session, session.begin():
            return create_task(session, spec)

    return (await run_in_threadpool(_store)).public()
