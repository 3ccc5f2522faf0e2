"""The models and the migrations describe one schema: Alembic's autogenerate comparison of the
models against a database migrated to head finds nothing to do, on SQLite and on Postgres. A model
change without its migration (or a refactor of the models that changes a column) fails here."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.db.models import Base
from shared.db.session import make_engine, upgrade


def test_the_models_match_a_database_migrated_to_head(db_url: str):
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
