"""Review: exclude an accepted pair from training with a reason, or undo it. The trainer's pair
query leaves excluded pairs out (services/trainer/data.py); the API and the export show the flag."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Pair, utcnow
from shared.errors import InvalidRequest, NotFound

MAX_REASON_CHARS = 500


def set_exclusion(sessions: sessionmaker[Session], pair_id: int, reason: str | None) -> Pair:
    """Exclude pair `pair_id` for `reason`, or include it again when `reason` is None."""
    if reason is not None:
        reason = reason.strip()
        if not reason:
            raise InvalidRequest("say why the pair is excluded: the reason is kept with it", param="reason")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidRequest(f"the reason is {len(reason)} characters; at most {MAX_REASON_CHARS}", param="reason")
    with sessions() as session, session.begin():
        pair = session.get(Pair, pair_id)
        if pair is None:
            raise NotFound(f"no pair {pair_id}", param="id")
        pair.excluded = reason is not None
        pair.excluded_reason = reason
        pair.excluded_at = utcnow() if reason is not None else None
        return pair
