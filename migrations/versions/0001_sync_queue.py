"""Create the sync_queue table, its enum types and its partial indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

sync_action = postgresql.ENUM("CREATE", "UPDATE", "DELETE", name="sync_action")
queue_status = postgresql.ENUM("PENDING", "PROCESSING", "COMPLETED", "FAILED", name="queue_status")


def upgrade() -> None:
    op.create_table(
        "sync_queue",
        sa.Column("id", sa.String(26, collation="C"), primary_key=True),
        sa.Column("position", sa.String(40, collation="C"), nullable=False),
        sa.Column("origin_id", sa.String(26, collation="C"), nullable=False),
        sa.Column("action", sync_action, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(255), nullable=False),
        sa.Column("sheet_row_index", sa.Integer(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", queue_status, server_default="PENDING", nullable=False),
        sa.Column("retries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_retries", sa.Integer(), server_default=sa.text("3"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_sync_queue_pending",
        "sync_queue",
        ["position"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        "ix_sync_queue_record_pending",
        "sync_queue",
        ["model", "record_id", "position"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index("ix_sync_queue_record", "sync_queue", ["model", "record_id", "origin_id"])
    op.create_index(
        "ix_sync_queue_processing",
        "sync_queue",
        ["model", "record_id"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )
    op.create_index(
        "ix_sync_queue_completed",
        "sync_queue",
        ["processed_at"],
        postgresql_where=sa.text("status = 'COMPLETED'"),
    )
    op.create_index(
        "ix_sync_queue_failed",
        "sync_queue",
        ["model", "id"],
        postgresql_where=sa.text("status = 'FAILED'"),
    )
    # A queue table churns: analyze and vacuum it far more often than the defaults, so the
    # claim's plan and its partial indexes stay good while rows come and go.
    op.execute(
        "ALTER TABLE sync_queue SET (autovacuum_vacuum_scale_factor = 0.02,"
        " autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)"
    )


def downgrade() -> None:
    op.drop_table("sync_queue")  # drops its indexes too
    queue_status.drop(op.get_bind(), checkfirst=True)
    sync_action.drop(op.get_bind(), checkfirst=True)
