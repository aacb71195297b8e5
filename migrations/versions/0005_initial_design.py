"""The initial design's config field on stored studies.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Configs are stored resolved (every field filled), so a config written before the initial
design existed lacks ``initial_design``. It is filled with 1, the single random start every
search without a carried-over LR made then, so that no stored study changes its decisions.
The value is spelled out here, as it was on the day of this revision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {"initial_design": 1}

_studies = sa.table("studies", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _rewrite(change: Any) -> None:
    bind = op.get_bind()
    for study_id, config in bind.execute(sa.select(_studies.c.id, _studies.c.config)).all():
        if isinstance(config, str):  # a driver that hands JSON back as text
            config = json.loads(config)
        new = change(config)
        if new != config:
            bind.execute(_studies.update().where(_studies.c.id == study_id).values(config=new))


def upgrade() -> None:
    if context.is_offline_mode():
        op.execute("-- 0005: fill old study configs by running `stagelr migrate` online")
        return
    _rewrite(lambda config: {**_BEFORE, **config})


def downgrade() -> None:
    if context.is_offline_mode():
        return
    _rewrite(lambda config: {k: v for k, v in config.items() if k not in _BEFORE})
