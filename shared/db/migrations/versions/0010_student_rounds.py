"""Distillation rounds: students.round and students.parent_id; distillation_runs.lineage

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('students') as batch_op:
        batch_op.add_column(sa.Column('round', sa.Integer(), server_default=sa.text('1'), nullable=False))
        batch_op.add_column(sa.Column('parent_id', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key('fk_students_parent_id', 'students', ['parent_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('distillation_runs') as batch_op:
        batch_op.add_column(sa.Column('lineage', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('distillation_runs') as batch_op:
        batch_op.drop_column('lineage')
    with op.batch_alter_table('students') as batch_op:
        batch_op.drop_constraint('fk_students_parent_id', type_='foreignkey')
        batch_op.drop_column('parent_id')
        batch_op.drop_column('round')
