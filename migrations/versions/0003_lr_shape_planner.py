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

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

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

_studies = sa.table("studies", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("segments") as batch_op:
        batch_op.add_column(sa.Column("lr_end", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("lr_shape", sa.String(length=32), nullable=False, server_default="constant")
        )
    if context.is_offline_mode():
        # SQL written for later: no rows to read now. `stagelr migrate` (online) fills
        # the stored configs; offline SQL is for a database with no studies yet.
        op.execute("-- 0003: fill old study configs by running `stagelr migrate` online")
        return
    bind = op.get_bind()
    rows = bind.execute(sa.select(_studies.c.id, _studies.c.config)).all()
    for study_id, config in rows:
        if isinstance(config, str):  # a driver that hands JSON back as text
            config = json.loads(config)
        missing = {k: v for k, v in _BEFORE.items() if k not in config}
        if missing:
            bind.execute(
                _studies.update()
                .where(_studies.c.id == study_id)
                .values(config={**config, **missing})
            )


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch_op:
        batch_op.drop_column("lr_shape")
        batch_op.drop_column("lr_end")
    if context.is_offline_mode():
        return
    bind = op.get_bind()
    rows = bind.execute(sa.select(_studies.c.id, _studies.c.config)).all()
    for study_id, config in rows:
        if isinstance(config, str):
            config = json.loads(config)
        kept = {k: v for k, v in config.items() if k not in _BEFORE}
        bind.execute(_studies.update().where(_studies.c.id == study_id).values(config=kept))
