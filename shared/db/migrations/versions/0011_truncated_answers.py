"""Truncated answers: chains.initial_truncated / final_truncated, chain_steps.truncated, pairs.truncated

An answer cut off at the job's max_tokens is not a finished answer; the trainer needs to know which
ones were. Rows stored before this revision keep NULL (unknown).

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chains') as batch_op:
        batch_op.add_column(sa.Column('initial_truncated', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('final_truncated', sa.Boolean(), nullable=True))
    with op.batch_alter_table('chain_steps') as batch_op:
        batch_op.add_column(sa.Column('truncated', sa.Boolean(), nullable=True))
    with op.batch_alter_table('pairs') as batch_op:
        batch_op.add_column(sa.Column('truncated', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pairs') as batch_op:
        batch_op.drop_column('truncated')
    with op.batch_alter_table('chain_steps') as batch_op:
        batch_op.drop_column('truncated')
    with op.batch_alter_table('chains') as batch_op:
        batch_op.drop_column('final_truncated')
        batch_op.drop_column('initial_truncated')
