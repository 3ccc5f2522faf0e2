"""FastAPI dependencies of the teacher, as Annotated aliases so routes read like prose."""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from services.teacher.state import TeacherState
from shared.db.idempotency import MAX_KEY_LENGTH
from shared.engines.base import EngineDead
from shared.errors import NotReady


def get_state(request: Request) -> TeacherState:
    return request.app.state.teacher


def get_session(state: Annotated[TeacherState, Depends(get_state)]) -> Iterator[Session]:
    """A read session for the request. Routes that write open their own short transaction
    (state.sessions + begin) so nothing is held open while the sampler runs."""
    with state.readers() as session:
        yield session


def get_ready_state(state: Annotated[TeacherState, Depends(get_state)]) -> TeacherState:
    """The state, once the engine is loaded and alive; otherwise 503 with Retry-After (the caller retries)."""
    if state.engine is None:
        # The load error itself can name files and URLs: it is in the log and, for admins, at /readyz.
        raise NotReady("the teacher engine failed to load; see the teacher's log" if state.engine_error
                       else "the teacher engine is still loading; retry shortly")
    if (dead := state.check_engine()) is not None:
        raise EngineDead(dead)
    return state


State = Annotated[TeacherState, Depends(get_state)]
ReadyState = Annotated[TeacherState, Depends(get_ready_state)]
DbSession = Annotated[Session, Depends(get_session)]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH,
    description="Send the same key when retrying a request whose answer was lost: you get what the first request made "
                "(header Idempotent-Replayed: true) instead of a second job or run. The same key with another body is a 422.")]
