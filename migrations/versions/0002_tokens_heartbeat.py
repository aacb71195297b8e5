"""Project tokens (auth) and a segment heartbeat (stale leases).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

- ``tokens``: bearer tokens per project, stored as SHA-256 hex digests (never the token);
  ``prefix`` is the token's first characters, kept to tell tokens apart in listings.
- ``segments.heartbeat_at``: when the job last showed life on an open segment (created,
  handed out again, or an observation batch arrived). An open segment whose heartbeat is
  older than the study's lease is stale.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("last_used_at", _Time, nullable=True),
        sa.Column("revoked_at", _Time, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_tokens_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tokens_token_hash")),
    )
    with op.batch_alter_table("segments") as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", _Time, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch_op:
        batch_op.drop_column("heartbeat_at")
    op.drop_table("tokens")
