"""A small durable work queue over any table with lease columns (job batches, distillation and
evaluation runs).

At-least-once with fencing: a claim takes a lease for `lease_seconds` and bumps `attempt`; a
lease that is not renewed (heartbeat) expires and the row becomes claimable again, so a killed
worker's work is rescued automatically. Every write a worker makes afterwards is fenced by
`WHERE lease_owner = me AND attempt = mine`, so a stalled worker can never overwrite its
successor. Effects must therefore be idempotent (chains and pairs are: see store.py).

Leases are measured by the database's clock on Postgres (`database_now`), so replicas whose clocks
disagree still agree on which leases have expired. A clean hand-back (`release`) gives the claim
back: it does not count as an attempt, so rolling restarts never use up `max_attempts`.

Postgres claims with SELECT … FOR UPDATE SKIP LOCKED, so many replicas share one queue without
blocking each other; SQLite claims inside BEGIN IMMEDIATE (one writer) with UPDATE … RETURNING.
A claim can narrow and order what it takes (`candidates`, e.g. batches of active jobs, oldest job
first) and act on a parent row in its own transaction (`on_claim`): job_queue.py does both.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Literal, TypeVar

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import utcnow
from shared.db.outages import first_line, is_outage
from shared.errors import Conflict, NotFound

log = logging.getLogger(__name__)

Row = TypeVar("Row")

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")


def database_now(session: Session) -> datetime:
    """Now, by the clock every worker shares: the Postgres server's (a replica whose own clock runs
    ahead would otherwise see live leases as expired and steal them). A SQLite database is a local
    file, so its workers share this host's clock already."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.now()))
    return utcnow()


def worker_owner(name: str) -> str:
    """A lease owner unique to one worker: host, process, the worker's name and a random tail (two
    workers of one process, or a restarted process with the same pid, never share an owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:8]}"


class LeaseLost(Exception):
    """A fenced write matched nothing: the lease expired and another worker holds the row now, or
    the work it was for ended meanwhile. The writer rolls its transaction back and writes nothing more."""


@dataclass(frozen=True)
class Lease:
    """The claim a worker holds on a row; every write it makes is fenced by (owner, attempt)."""

    row_id: str
    owner: str
    attempt: int


def _claimable(model: type, now):
    return or_(
        model.status == "queued",
        and_(model.status == "running", model.lease_expires_at < now),
    )


class _Refused(Exception):
    """on_claim turned the claim down: roll the claim back."""


def claim(
    factory: sessionmaker[Session],
    model: type[Row],
    owner: str,
    lease_seconds: float,
    *,
    candidates: Select | None = None,
    on_claim: Callable[[Session, Row], bool] | None = None,
) -> Row | None:
    """Take the first claimable row (queued, or running with an expired lease), or None.

    `candidates` is a SELECT of `model.id` with any extra joins, filters and order (default: all
    rows, oldest first); the claimable filter, LIMIT 1 and the row lock are added here.
    `on_claim(session, row)` runs inside the claim's transaction (e.g. to mark a parent row); when
    it returns False the claim is rolled back and None returned."""
    try:
        with factory() as session, session.begin():
            now = database_now(session)
            expires = now + timedelta(seconds=lease_seconds)
            query = (candidates if candidates is not None else select(model.id).order_by(model.created_at)).where(_claimable(model, now)).limit(1)
            if session.get_bind().dialect.name == "postgresql":
                row_id = session.scalar(query.with_for_update(skip_locked=True, of=model))
                if row_id is None:
                    return None
                target = model.id == row_id
            else:  # BEGIN IMMEDIATE (session.py) already holds SQLite's one write lock
                target = model.id == query.scalar_subquery()
            claimed = session.scalars(
                update(model)
                .where(target)
                .values(status="running", lease_owner=owner, lease_expires_at=expires, attempt=model.attempt + 1)
                .returning(model)
                .execution_options(synchronize_session=False)
            ).one_or_none()
            if claimed is None:
                return None
            if claimed.started_at is None:
                claimed.started_at = now
            if on_claim is not None and not on_claim(session, claimed):
                raise _Refused()
            return claimed
    except _Refused:
        return None


def fence(model: type, row_id: Any, owner: str, attempt: int):
    """The WHERE clause every write of a lease holder carries."""
    return and_(model.id == row_id, model.lease_owner == owner, model.attempt == attempt, model.status == "running")


def fenced_update(session: Session, model: type, row_id: Any, owner: str, attempt: int, /, **values: Any) -> bool:
    """Update the row only while this worker still holds its lease; False means the lease is lost
    (the caller must roll back its transaction)."""
    result = session.execute(update(model).where(fence(model, row_id, owner, attempt)).values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def heartbeat(factory: sessionmaker[Session], model: type, row_id: Any, owner: str, attempt: int, lease_seconds: float) -> bool:
    """Renew the lease; False when it was lost (expired and taken by another worker, or finished)."""
    with factory() as session, session.begin():
        return fenced_update(session, model, row_id, owner, attempt, lease_expires_at=database_now(session) + timedelta(seconds=lease_seconds))


def finish(factory: sessionmaker[Session], model: type, row_id: Any, owner: str, attempt: int, status: str, **values: Any) -> bool:
    """Move a held row to a final status and release the lease."""
    assert status in FINAL
    with factory() as session, session.begin():
        return fenced_update(session, model, row_id, owner, attempt, status=status, lease_owner=None, lease_expires_at=None, finished_at=utcnow(), **values)


def request_cancel(session: Session, model: type, row_id: Any) -> str | None:
    """Cancel a queued row at once; mark a running one for its worker to stop between batches.
    Returns the status after the call (None if the row does not exist). Caller commits."""
    row = session.get(model, row_id, with_for_update=session.get_bind().dialect.name == "postgresql")
    if row is None:
        return None
    if row.status == "queued":
        row.status, row.finished_at = "cancelled", utcnow()
    elif row.status == "running":
        row.cancel_requested = True
    return row.status


def get_row(session: Session, model: type[Row], row_id: Any, what: str) -> Row:
    """The row, or a 404 that names what was asked for ("distillation run", "evaluation")."""
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"no {what} {row_id!r}", param="id")
    return row


def cancel_row(session: Session, model: type, row_id: Any, what: str) -> None:
    """POST …/cancel of a row (caller commits): 404 if unknown, 409 once it has finished."""
    status = request_cancel(session, model, row_id)
    if status is None:
        raise NotFound(f"no {what} {row_id!r}", param="id")
    if status in ("succeeded", "failed"):
        raise Conflict(f"{what} {row_id} already {status}; nothing to cancel", param="id")


def cancel_and_read(factory: sessionmaker[Session], model: type[Row], row_id: Any, what: str) -> Row:
    """Cancel the row (cancel_row) in its own transaction, then read it back as it stands."""
    with factory() as session, session.begin():
        cancel_row(session, model, row_id, what)
    with factory() as session:
        return get_row(session, model, row_id, what)


def newest_rows(session: Session, model: type[Row], limit: int, **equal: Any) -> list[Row]:
    """Up to `limit` rows, newest first, whose columns equal the values given (a None value: any)."""
    query = select(model).order_by(model.created_at.desc()).limit(limit)
    for column, value in equal.items():
        if value is not None:
            query = query.where(getattr(model, column) == value)
    return list(session.scalars(query))


def release(factory: sessionmaker[Session], model: type, row_id: Any, owner: str, attempt: int) -> bool:
    """Hand a held row back to the queue at once (a worker shutting down between batches), so
    another worker resumes it without waiting for the lease to expire. The claim is given back
    with it: a clean hand-back is not an attempt."""
    with factory() as session, session.begin():
        return fenced_update(session, model, row_id, owner, attempt, **handed_back(model))


def handed_back(model: type) -> dict[str, Any]:
    """The values of a row handed back to the queue (its lease owner is gone, so no stale writer can
    match the fence again, and the claim it used does not count)."""
    return {"status": "queued", "lease_owner": None, "lease_expires_at": None, "attempt": model.attempt - 1}


class Heartbeat:
    """Renews a held lease every third of its length until stopped; sets `lost` when renewal is
    refused (the lease expired and another worker took the row, or the row was finished)."""

    def __init__(self, factory: sessionmaker[Session], model: type, row_id: Any, owner: str, attempt: int, lease_seconds: float) -> None:
        self.factory, self.model, self.row_id = factory, model, row_id
        self.owner, self.attempt, self.lease_seconds = owner, attempt, lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        # In the claimer's context: its lines carry the claimer's job, distillation or evaluation id.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), name=f"heartbeat-{model.__tablename__}-{str(row_id)[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(max(self.lease_seconds / 3, 0.05)):
            try:
                if not heartbeat(self.factory, self.model, self.row_id, self.owner, self.attempt, self.lease_seconds):
                    log.warning("lease on %s %s lost (attempt %d)", self.model.__tablename__, self.row_id, self.attempt)
                    self.lost.set()
                    return
            except Exception as error:  # the database blinked: try again next beat; the lease may still hold
                # An outage is one line a beat (its traceback says nothing more); anything else keeps its traceback.
                log.warning("heartbeat for %s %s failed: %s", self.model.__tablename__, self.row_id, first_line(error),
                            exc_info=not is_outage(error))
