"""Accepted pairs: filtered, cursor-paginated listing, a streamed JSONL export (TRL's SFT format, or
preference pairs from the stored chains for DPO), and
review: an admin excludes a pair from training with a reason, or undoes it.

A client key sees the pairs of its own jobs only; admins see every pair. An excluded pair stays,
listed and exported with its flag and reason; the trainer's pair query leaves it out."""

from __future__ import annotations

import json
from typing import Annotated, Iterator, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from services.teacher.deps import DbSession, State
from services.teacher.protocol import Exclusion, PairPage, PairView, chat_record
from shared.db.models import ChainRecord, Job, Pair, utcnow
from shared.distillation.preferences import CHAIN_ORDER, ChainAnswers, by_prompt, chain_columns, preference_records
from shared.errors import NotFound
from shared.request_fields import ROW_ID_MAX
from shared.web.auth import AdminScope, Caller, ClientCaller
from shared.web.errors import error_responses
from shared.web.routing import AuthFirstRoute

router = APIRouter(tags=["pairs"], route_class=AuthFirstRoute,
                   responses=error_responses(503))  # /v1/pairs for client keys, /admin/pairs for review


def _visible(query: Select, caller: Caller) -> Select:
    """Only pairs of jobs the caller owns (all of them for an admin)."""
    if caller.sees_all:
        return query
    return query.join(Job, Job.id == Pair.job_id).where(Job.owner == caller.key_id)


def _filtered(query: Select, task: str | None, job: str | None, min_gain: float | None, excluded: bool | None) -> Select:
    if excluded is not None:
        query = query.where(Pair.excluded.is_(excluded))
    if task is not None:
        query = query.where(Pair.task_name == task)
    if job is not None:
        query = query.where(Pair.job_id == job)
    if min_gain is not None:
        query = query.where(Pair.reward_gain >= min_gain)
    return query


PairId = Annotated[int, Path(ge=0, le=ROW_ID_MAX)]
TaskFilter = Query(None, max_length=64, description="Only pairs of this task.")
JobFilter = Query(None, max_length=32, description="Only pairs of this job.")
GainFilter = Query(None, description="Only pairs whose reward gain (after − before) is at least this.")
ExcludedFilter = Query(None, description="true: only pairs excluded in review; false: only those not excluded (what trains).")


@router.get("/v1/pairs", response_model=PairPage)
def list_pairs(
    caller: ClientCaller,
    session: DbSession,
    task: str | None = TaskFilter,
    job: str | None = JobFilter,
    min_gain: float | None = GainFilter,
    excluded: bool | None = ExcludedFilter,
    cursor: int | None = Query(None, ge=0, le=ROW_ID_MAX, description="next_cursor of the previous page."),
    limit: int = Query(100, ge=1, le=1000),
) -> PairPage:
    """Pairs in id order; keyset pagination (id > cursor), so pages stay stable while jobs add pairs."""
    query = _filtered(_visible(select(Pair), caller), task, job, min_gain, excluded).order_by(Pair.id).limit(limit + 1)
    if cursor is not None:
        query = query.where(Pair.id > cursor)
    rows = list(session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return PairPage(data=[PairView.of(pair) for pair in page], next_cursor=page[-1].id if more else None)


def _export_lines(sessions: sessionmaker[Session], caller: Caller, task: str | None, job: str | None, min_gain: float | None,
                  excluded: bool | None, page_size: int) -> Iterator[bytes]:
    """Keyset pages of `page_size` rows (memory stays flat however many pairs exist), each read in
    its own short session (no transaction held open while the client downloads, which on SQLite
    would block every writer)."""
    columns = select(Pair.id, Pair.task_name, Pair.prompt, Pair.response, Pair.reward_before, Pair.reward_after, Pair.truncated,
                     Pair.excluded, Pair.excluded_reason)
    last_id = -1
    while True:
        query = _filtered(_visible(columns, caller), task, job, min_gain, excluded).where(Pair.id > last_id).order_by(Pair.id).limit(page_size)
        with sessions() as session:
            rows = session.execute(query).all()
        if not rows:
            return
        yield b"".join(json.dumps(chat_record(row), ensure_ascii=False).encode() + b"\n" for row in rows)
        last_id = rows[-1].id


def _chain_groups(sessions: sessionmaker[Session], caller: Caller, task: str | None, job: str | None, excluded: bool | None,
                  page_size: int) -> Iterator[list[ChainAnswers]]:
    """The visible chains, one (job, prompt) group at a time, in keyset pages of about `page_size`
    chains (a page never splits a group), excluded ones as `chain_columns` says."""
    columns = chain_columns(excluded)
    if not caller.sees_all:
        columns = columns.join(Job, Job.id == ChainRecord.job_id).where(Job.owner == caller.key_id)
    if task is not None:
        columns = columns.where(ChainRecord.task_name == task)
    if job is not None:
        columns = columns.where(ChainRecord.job_id == job)
    order = CHAIN_ORDER
    after: tuple[str, int] | None = None
    while True:
        query = columns if after is None else columns.where(tuple_(ChainRecord.job_id, ChainRecord.prompt_index) > after)
        with sessions() as session:
            chains = [ChainAnswers(*row) for row in session.execute(query.order_by(*order).limit(page_size)).all()]
        if not chains:
            return
        groups = list(by_prompt(chains))
        if len(chains) == page_size and len(groups) > 1:
            groups.pop()  # may be cut short by the limit: the next page starts with it
        elif len(chains) == page_size:  # one group fills the page: read the whole of it
            first = chains[0]
            with sessions() as session:
                whole = columns.where(ChainRecord.job_id == first.job_id, ChainRecord.prompt_index == first.prompt_index)
                groups = [[ChainAnswers(*row) for row in session.execute(whole.order_by(*order)).all()]]
        yield from groups
        after = (groups[-1][0].job_id, groups[-1][0].prompt_index)


def _preference_lines(groups: Iterator[list[ChainAnswers]], min_margin: float | None) -> Iterator[bytes]:
    for group in groups:
        records = preference_records(group, min_margin)
        if records:
            yield b"".join(json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records)


@router.get("/v1/pairs/export", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def export(
    caller: ClientCaller,
    state: State,
    format: Literal["jsonl", "preference"] = Query(
        "jsonl", description="jsonl: one chat-format record per accepted pair (SFT); preference: one preference pair per "
        "line, built from the stored chains (DPO)."),
    task: str | None = TaskFilter,
    job: str | None = JobFilter,
    min_gain: float | None = Query(None, description="Only pairs whose reward gain is at least this: after − before (jsonl), "
                                   "the margin chosen − rejected (preference)."),
    excluded: bool | None = Query(None, description="true: only pairs excluded in review; false: only those not excluded "
                                  "(what trains). Unset: jsonl has both, flagged; preference leaves excluded ones out."),
) -> StreamingResponse:
    """`format=jsonl`: every matching pair as `{"messages": [user, assistant], "task",
    "reward_before", "reward_after", "truncated", "excluded", "excluded_reason"}` per line, the conversational
    format TRL's SFT trainer reads; excluded pairs are in it, flagged, unless excluded=false.

    `format=preference`: TRL's conversational preference format, `{"prompt": [user], "chosen":
    [assistant], "rejected": [assistant], "chosen_reward", "rejected_reward", "margin", "source",
    "task", "job_id", "chain_ids"}` per line, from the stored chains: each chain's draft against its
    final answer (`source: revision`) and the best against the worst final answer of a prompt's
    chains (`chains`), ordered by the task's reward; ties are left out, and so are chains whose
    pair was excluded in review unless excluded=true (shared/distillation/preferences.py)."""
    page_size = state.settings.teacher.export_page_size
    if format == "preference":
        lines = _preference_lines(_chain_groups(state.sessions, caller, task, job, excluded, page_size), min_gain)
    else:
        lines = _export_lines(state.sessions, caller, task, job, min_gain, excluded, page_size)
    return StreamingResponse(lines, media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{"preferences" if format == "preference" else "pairs"}.jsonl"'})


def set_exclusion(sessions: sessionmaker[Session], pair_id: int, reason: str | None) -> Pair:
    """Exclude pair `pair_id` from training for `reason`, or include it again when `reason` is None."""
    with sessions() as session, session.begin():
        pair = session.get(Pair, pair_id)
        if pair is None:
            raise NotFound(f"no pair {pair_id}", param="id")
        pair.excluded = reason is not None
        pair.excluded_reason = reason
        pair.excluded_at = utcnow() if reason is not None else None
        return pair


@router.put("/admin/pairs/{pair_id}/exclusion", response_model=PairView, responses=error_responses(404))
def exclude(pair_id: PairId, exclusion: Exclusion, _scope: AdminScope, state: State) -> PairView:
    """Exclude the pair from training (admin); again to change the reason. Runs that already took
    their data snapshot keep it."""
    return PairView.of(set_exclusion(state.sessions, pair_id, exclusion.reason))


@router.delete("/admin/pairs/{pair_id}/exclusion", response_model=PairView, responses=error_responses(404))
def include(pair_id: PairId, _scope: AdminScope, state: State) -> PairView:
    """Undo an exclusion (admin): the pair trains again in later runs."""
    return PairView.of(set_exclusion(state.sessions, pair_id, None))
