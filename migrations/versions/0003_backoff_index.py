"""An index of the PENDING rows waiting out a backoff, so a claim skips their records cheaply.

Before it, a claim probed two indexes for every PENDING change queued behind a record whose
head was in backoff; while the writer is down that is the whole backlog, on every claim
(100,000 such rows: about 0.6 s per claim, against 0.05 s with this index).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sync_queue_backoff",
        "sync_queue",
        ["available_at"],
        postgresql_where=sa.text("status = 'PENDING' AND available_at > created_at"),
    )


def downgrade() -> None:
    op.drop_index("ix_sync_queue_backoff", table_name="sync_queue")
