"""Console logins kept by the server (the console_sessions table).

The cookie holds a random 256-bit secret. The database keeps its SHA-256 as the session's id and
the admin token sealed (Fernet) with a key derived from the secret: the playground needs the token
to call the student service, and only the cookie's holder can unseal it. A session ends at its
expiry (DSC_CONSOLE_SESSION_HOURS), at logout (its row is deleted: a copy of the cookie opens
nothing after that) and when the admin token changes (the unsealed token no longer identifies).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import ConsoleSession, utcnow
from shared.db.session import transaction


def _session_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _sealer(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"dsc console session").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def open_session(sessions: sessionmaker[Session], token: str, lifetime: timedelta) -> str:
    """A new session for `token` (already checked to be the admin token): the cookie's secret."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    with transaction(sessions) as session:
        session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))  # the expired ones, now and then
        session.add(ConsoleSession(id=_session_id(secret), sealed_token=_sealer(secret).encrypt(token.encode()).decode(),
                                   created_at=now, expires_at=now + lifetime))
    return secret


def session_token(session: Session, secret: str) -> str | None:
    """The admin token of the live session behind a cookie's secret, or None (unknown, ended, expired)."""
    row = session.get(ConsoleSession, _session_id(secret))
    if row is None or row.expires_at <= utcnow():
        return None
    try:
        return _sealer(secret).decrypt(row.sealed_token.encode()).decode()
    except InvalidToken:
        return None


def close_session(sessions: sessionmaker[Session], secret: str) -> None:
    with transaction(sessions) as session:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id == _session_id(secret)))
