"""jobs and distillation_runs: idempotency_key (unique, scoped to the caller) and request_hash

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLES = ('jobs', 'distillation_runs')


def upgrade() -> None:
    # add_column plus a unique index: no table rebuild on SQLite; existing rows have no key (NULLs never collide).
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        op.create_index(f'ix_{table}_idempotency_key', table, ['idempotency_key'], unique=True)


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f'ix_{table}_idempotency_key', table_name=table)
        op.drop_column(table, 'request_hash')
        op.drop_column(table, 'idempotency_key')
