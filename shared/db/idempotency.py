"""Idempotent creation: a client that retries `POST /v1/jobs` or `POST /admin/distillations` after a
timeout sends the same `Idempotency-Key` header, and gets the job or run its first request made
instead of a second one (which would sample, and train on, the same prompts twice).

A key is scoped to the caller (two clients may pick the same key) and stored on the row it made,
with a fingerprint of the request body: the same key with another body is a 422, as the IETF
Idempotency-Key draft asks. Two retries racing each other meet at the unique index; the loser
reads the winner's row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import DscError

Row = TypeVar("Row")

MAX_KEY_LENGTH = 128


class KeyReused(DscError):
    status_code = 422
    error_type = "idempotency_error"


def fingerprint(body: Any) -> str:
    """A stable digest of a request body (a JSON-able value)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def scoped_key(caller_id: str | None, key: str | None) -> str | None:
    """The stored form of a caller's key (None: no key sent)."""
    return None if key is None else f"{caller_id or '-'}:{key}"


def earlier(session: Session, model: type[Row], key: str, digest: str) -> Row | None:
    """The row made by an earlier request with this key, or None; a 422 when its body differed."""
    row = session.scalar(select(model).where(model.idempotency_key == key))
    if row is not None and row.request_hash != digest:
        raise KeyReused(f"Idempotency-Key {key.split(':', 1)[1]!r} was already used with a different request body; "
                        "send a new key for a new request", param="Idempotency-Key")
    return row


def create_once(sessions: sessionmaker[Session], model: type[Row], key: str | None, digest: str,
                create: Callable[[Session], Row]) -> tuple[Row, bool]:
    """Run `create(session)` in its own transaction unless a request with `key` did already;
    returns (row, replayed). Without a key every call creates."""
    try:
        with sessions() as session, session.begin():
            if key is not None and (row := earlier(session, model, key, digest)) is not None:
                return row, True
            row = create(session)
            if key is not None:
                row.idempotency_key, row.request_hash = key, digest
            session.flush()
            return row, False
    except IntegrityError:
        if key is None:
            raise
        with sessions() as session:  # a concurrent retry with the same key committed first
            row = earlier(session, model, key, digest)
            if row is None:
                raise
            return row, True
