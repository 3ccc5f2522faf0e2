"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 00:22:30.741950
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('distillation_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('progress', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('artifact_dir', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('distillation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_distillation_runs_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_distillation_runs_task_name'), ['task_name'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('prompts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_task_name'), ['task_name'], unique=False)

    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('critique_request', sa.Text(), nullable=False),
    sa.Column('revision_request', sa.Text(), nullable=False),
    sa.Column('reward', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('acceptance', sa.String(length=16), nullable=False),
    sa.Column('beta', sa.Float(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('prompts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('builtin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('chains',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('prompt_index', sa.Integer(), nullable=False),
    sa.Column('chain_index', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('initial_text', sa.Text(), nullable=False),
    sa.Column('initial_reward', sa.Float(), nullable=False),
    sa.Column('final_text', sa.Text(), nullable=False),
    sa.Column('final_reward', sa.Float(), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('acceptance', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'prompt_index', 'chain_index', name='uq_chains_job_prompt_chain')
    )
    with op.batch_alter_table('chains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chains_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_chains_task_name'), ['task_name'], unique=False)

    op.create_table('students',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('adapter_path', sa.Text(), nullable=True),
    sa.Column('merged_path', sa.Text(), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['distillation_runs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_students_name_version')
    )
    with op.batch_alter_table('students', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_students_task_name'), ['task_name'], unique=False)
        batch_op.create_index('uq_students_active_task', ['task_name'], unique=True,
                              postgresql_where=sa.text('active'), sqlite_where=sa.text('active'))

    op.create_table('chain_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.Integer(), nullable=False),
    sa.Column('step_index', sa.Integer(), nullable=False),
    sa.Column('critique', sa.Text(), nullable=False),
    sa.Column('revision', sa.Text(), nullable=False),
    sa.Column('reward', sa.Float(), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['chain_id'], ['chains.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chain_id', 'step_index', name='uq_chain_steps_chain_step')
    )
    with op.batch_alter_table('chain_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chain_steps_chain_id'), ['chain_id'], unique=False)

    op.create_table('pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('prompt_index', sa.Integer(), nullable=False),
    sa.Column('chain_index', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('reward_before', sa.Float(), nullable=False),
    sa.Column('reward_after', sa.Float(), nullable=False),
    sa.Column('reward_gain', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chain_id'], ['chains.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chain_id'),
    sa.UniqueConstraint('job_id', 'prompt_index', 'chain_index', name='uq_pairs_job_prompt_chain')
    )
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pairs_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pairs_reward_gain'), ['reward_gain'], unique=False)
        batch_op.create_index(batch_op.f('ix_pairs_task_name'), ['task_name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pairs_task_name'))
        batch_op.drop_index(batch_op.f('ix_pairs_reward_gain'))
        batch_op.drop_index(batch_op.f('ix_pairs_job_id'))

    op.drop_table('pairs')
    with op.batch_alter_table('chain_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chain_steps_chain_id'))

    op.drop_table('chain_steps')
    with op.batch_alter_table('students', schema=None) as batch_op:
        batch_op.drop_index('uq_students_active_task')
        batch_op.drop_index(batch_op.f('ix_students_task_name'))

    op.drop_table('students')
    with op.batch_alter_table('chains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chains_task_name'))
        batch_op.drop_index(batch_op.f('ix_chains_job_id'))

    op.drop_table('chains')
    op.drop_table('tasks')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_task_name'))
        batch_op.drop_index('ix_jobs_status_created')

    op.drop_table('jobs')
    with op.batch_alter_table('distillation_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_distillation_runs_task_name'))
        batch_op.drop_index('ix_distillation_runs_status_created')

    op.drop_table('distillation_runs')
