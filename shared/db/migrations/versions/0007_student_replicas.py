"""student_replicas: what each student service process serves (the registry's serving state)

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'student_replicas',
        sa.Column('id', sa.String(length=128), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('loaded', JSON, nullable=False),
        sa.Column('not_loaded', JSON, nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_student_replicas_seen_at', 'student_replicas', ['seen_at'])


def downgrade() -> None:
    op.drop_index('ix_student_replicas_seen_at', table_name='student_replicas')
    op.drop_table('student_replicas')
