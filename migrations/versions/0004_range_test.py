"""The range test's config fields on stored studies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Configs are stored resolved (every field filled), so a config written before the range
test existed lacks ``lr_bounds``, ``range_test_steps`` and ``range_test_decades``. They are
filled with the values that mean what the study did then (the given bounds, no range
test), so that no stored study changes its decisions. The values are spelled out here, as
they were on the day of this revision. Segments need no new column: the kind
``range_test`` and the shape ``exponential`` fit the existing string columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {
    "lr_bounds": "given",
    "range_test_steps": 100,
    "range_test_decades": 3.0,
}

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
        op.execute("-- 0004: fill old study configs by running `stagelr migrate` online")
        return
    _rewrite(lambda config: {**_BEFORE, **config})


def downgrade() -> None:
    if context.is_offline_mode():
        return
    _rewrite(lambda config: {k: v for k, v in config.items() if k not in _BEFORE})
