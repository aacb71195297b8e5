"""Archived studies.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

- ``studies.archived_at``: when the study was archived (NULL: not archived). An archived
  study leaves the default study list and keeps its whole history (replay, priors, the
  schedule export).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("archived_at")
