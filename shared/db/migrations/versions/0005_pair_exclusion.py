"""pairs.excluded, excluded_reason, excluded_at: pairs an admin reviewed out of training

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing pairs are not excluded. add_column only: no table rebuild on SQLite.
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('excluded', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('excluded_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('excluded_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35), as 0003: no rebuild of the table.
    op.drop_column('pairs', 'excluded_at')
    op.drop_column('pairs', 'excluded_reason')
    op.drop_column('pairs', 'excluded')
