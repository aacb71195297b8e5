"""A study's version: a counter of the writes to its history.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

- ``studies.version``: raised by one in every transaction that writes to the study's
  stages, segments, observations, forecasts or outages (the study's touch, which every
  such write makes first). A server process keeps the histories it read, each with the
  version it was read at, and uses one again only while the database holds that
  version: another worker's or replica's write raises it, and the history is read
  again. Existing studies start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(
            sa.Column("version", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("version")
