"""console_sessions: server-side console logins (the cookie holds a random secret, not the token)

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('sealed_token', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_console_sessions_expires_at', 'console_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_console_sessions_expires_at', table_name='console_sessions')
    op.drop_table('console_sessions')
