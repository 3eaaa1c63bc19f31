"""Longer positions: a retried dead letter replays its record's later changes after it.

Positions nest ("<anchor position>.000001"), so a replay anchored on a row that is itself a
replayed copy needs more than 40 characters. Widening a varchar rewrites neither the table nor
its indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "sync_queue",
        "position",
        type_=sa.String(255, collation="C"),
        existing_type=sa.String(40, collation="C"),
        existing_nullable=False,
    )


def downgrade() -> None:
    # Fails if a longer position is stored: finish or discard those rows first.
    op.alter_column(
        "sync_queue",
        "position",
        type_=sa.String(40, collation="C"),
        existing_type=sa.String(255, collation="C"),
        existing_nullable=False,
    )
