"""Segments whose LR moves (a decay), and the planner's config fields on stored studies.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

- ``segments.lr_end`` and ``segments.lr_shape``: a segment's LR moves from ``lr`` towards
  ``lr_end`` (the final decay of a step budget); every existing segment is ``constant``.
- ``studies.config``: configs are stored resolved (every field filled), so a config
  written before the planner existed lacks its fields. They are filled with the values
  that reproduce the behaviour of that time (fixed stages, no decay, no continuation,
  one data seed per stage), so that no stored study changes its decisions. The values
  are spelled out here, as they were on the day of this revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

try:
    from stagelr_migrations.config_fields import fill_study_configs, strip_study_configs
except ImportError:  # a checkout run without the package installed (PYTHONPATH=.)
    from migrations.config_fields import fill_study_configs, strip_study_configs

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {
    "planner": "fixed",
    "budget_stages": 3,
    "decay_fraction": 0.0,
    "decay_shape": "one_minus_sqrt",
    "continue_best": False,
    "same_data": True,
}


def upgrade() -> None:
    with op.batch_alter_table("segments") as batch_op:
        batch_op.add_column(sa.Column("lr_end", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("lr_shape", sa.String(length=32), nullable=False, server_default="constant")
        )
    fill_study_configs(_BEFORE, "0003")


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch_op:
        batch_op.drop_column("lr_shape")
        batch_op.drop_column("lr_end")
    strip_study_configs(_BEFORE)
