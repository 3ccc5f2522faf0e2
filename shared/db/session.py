"""Database engine, sessions and migrations (Alembic, run programmatically)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver we install)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redacted_url(url: str) -> str:
    """The URL as it may be printed or logged: its password as ***."""
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<a database URL that does not parse>"  # it could hold the password anywhere


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = make_url(url).database  # without a ?timeout= query
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    _ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        # How long a writer waits for SQLite's lock before "database is locked" (an outage to the
        # workers, 503 to clients): 30 s unless the URL says otherwise (sqlite:///dsc.db?timeout=5).
        timeout = {} if "timeout" in make_url(url).query else {"timeout": SQLITE_BUSY_TIMEOUT_S}
        engine = create_engine(url, connect_args={**timeout, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # autocommit at the driver; SQLAlchemy emits BEGIN
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer. The mode is kept in the file; setting it again needs a
    # lock, so a connection opened while a writer holds one would wait for it just to read.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


READ_ONLY = "dsc_read_only"  # execution option of the engine behind read_session_factory


def _begin_sqlite(connection) -> None:
    # A deferred transaction that later writes can fail with "database is locked" despite
    # busy_timeout, so writers take the write lock up front (SQLite has one writer anyway). Readers
    # must not: under WAL a plain BEGIN reads a snapshot without waiting for, or blocking, the writer.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class ReadOnlySession(Session):
    """A session for reading only: on SQLite it does not take the write lock, so writing through
    it is a programming error, refused at flush instead of risking "database is locked"."""

    def flush(self, objects=None) -> None:
        if self.new or self.dirty or self.deleted:
            raise RuntimeError("this session only reads; write in a transaction(sessions) of its own")
        super().flush(objects)


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for requests that only read (listings, views, exports)."""
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), class_=ReadOnlySession, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits as one transaction, or rolls back whole on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


MIGRATION_LOCK = 0x64534331  # the Postgres advisory lock that serialises migrations ("dSC1")


def upgrade(url: str) -> None:
    """Apply all migrations (idempotent). Services call this at start, so replicas starting
    together on a fresh Postgres take turns under an advisory lock (without it, both created
    alembic_version and one died); SQLite's own write lock serialises it there."""
    from alembic import command

    _ensure_sqlite_dir(url)  # a fresh data directory may not exist yet
    if not normalise_url(url).startswith("postgresql"):
        command.upgrade(alembic_config(url), "head")
        return
    engine = make_engine(url)
    try:
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                command.upgrade(alembic_config(url), "head")
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
