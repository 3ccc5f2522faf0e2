"""job batches: the unit job workers claim, so many workers share one job

Revision ID: 0003
Revises: 0002

Creates job_batches and cuts every active job (queued or running) into batches from its `done`
to its `total`, at the batch size this deployment is configured with (DSC_JOB_BATCH_SIZE; the
size an 0002 job was being worked at was not stored). The job-level lease columns go: batches
hold the leases now. Run it with the teacher workers stopped, as every migration.
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _configured_batch_size() -> int:
    from shared.settings import Settings

    return Settings().jobs.batch_size


def upgrade() -> None:
    op.create_table('job_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('end', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('committed_by', sa.String(length=128), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'start', name='uq_job_batches_job_start')
    )
    with op.batch_alter_table('job_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_batches_job_id'), ['job_id'], unique=False)
        batch_op.create_index('ix_job_batches_status', ['status'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:  # add_column only: no table rebuild on SQLite
        batch_op.add_column(sa.Column('batch_size', sa.Integer(), nullable=True))
    _cut_active_jobs(_configured_batch_size())
    # Plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35), not batch mode: rebuilding `jobs` on SQLite
    # would drop the old table under its chains and pairs (ON DELETE CASCADE, foreign keys on).
    op.drop_column('jobs', 'lease_owner')
    op.drop_column('jobs', 'lease_expires_at')


def _cut_active_jobs(size: int) -> None:
    from shared.db.models import utcnow

    jobs = sa.table('jobs', sa.column('id'), sa.column('kind'), sa.column('status'), sa.column('done'), sa.column('total'),
                    sa.column('batch_size'), sa.column('finished_at', sa.DateTime(timezone=True)))
    batches = sa.table('job_batches', sa.column('job_id'), sa.column('start'), sa.column('end'), sa.column('status'),
                       sa.column('attempt'), sa.column('failures'), sa.column('created_at', sa.DateTime(timezone=True)))
    bind, now = op.get_bind(), utcnow()
    background = jobs.c.kind == 'job'
    # 0002 committed a job's last batch and finished the job in two transactions: a worker that died
    # in between left it running with everything done. Its rescuer would have finished it at once.
    bind.execute(sa.update(jobs).where(background, jobs.c.status == 'running', jobs.c.done >= jobs.c.total)
                 .values(status='succeeded', finished_at=now))
    active = bind.execute(sa.select(jobs.c.id, jobs.c.done, jobs.c.total).where(background, jobs.c.status.in_(('queued', 'running')))).all()
    rows = [
        {'job_id': job_id, 'start': start, 'end': min(start + size, total), 'status': 'queued', 'attempt': 0, 'failures': 0, 'created_at': now}
        for job_id, done, total in active
        for start in range(done, total, size)
    ]
    if rows:
        bind.execute(sa.insert(batches), rows)
    if active:
        bind.execute(sa.update(jobs).where(jobs.c.id.in_([job_id for job_id, _, _ in active])).values(batch_size=size))


def downgrade() -> None:
    op.add_column('jobs', sa.Column('lease_owner', sa.String(length=128), nullable=True))
    op.add_column('jobs', sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_column('jobs', 'batch_size')
    with op.batch_alter_table('job_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_job_batches_status')
        batch_op.drop_index(batch_op.f('ix_job_batches_job_id'))
    op.drop_table('job_batches')
