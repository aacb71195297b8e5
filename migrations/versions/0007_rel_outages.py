"""Outages: steps a job trained while the service was unreachable.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

- ``outages``: one row per outage a job reported once the service was back: its
  client-made ``key`` (unique per study, so a retried report is a no-op), the ``steps``
  trained on fallback segments, and ``after_seq``, the seq of the last segment handed out
  before it (None: before the first). The study's plan is shortened by their sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("after_seq", sa.Integer(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_outages_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outages")),
        sa.UniqueConstraint("study_id", "key", name=op.f("uq_outages_study_id_key")),
    )


def downgrade() -> None:
    op.drop_table("outages")
