"""task evaluation prompts and training reward floor; on-demand evaluation runs

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('eval_prompts', JSON, nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('train_min_reward', sa.Float(), nullable=True))

    op.create_table('evaluation_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('student_id', sa.String(length=32), nullable=True),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', JSON, nullable=False),
    sa.Column('progress', JSON, nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_evaluation_runs_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_runs_task_name'), ['task_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_runs_student_id'), ['student_id'], unique=False)


def downgrade() -> None:
    op.drop_table('evaluation_runs')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('train_min_reward')
        batch_op.drop_column('eval_prompts')
