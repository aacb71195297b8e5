"""What the migrations that add config fields share (0003, 0004, 0005); only they import
it, never the running server.

Configs are stored resolved (every field filled), so a config written before a field
existed lacks it. Such a migration fills the field with the value that means what the
study did then, so that no stored study changes its decisions, and its downgrade takes
the field out again. Each migration spells out its own values; only the row-by-row
rewrite lives here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from alembic import context, op

__all__ = ["fill_study_configs", "strip_study_configs"]

_studies = sa.table("studies", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _rewrite(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    bind = op.get_bind()
    for study_id, config in bind.execute(sa.select(_studies.c.id, _studies.c.config)).all():
        if isinstance(config, str):  # a driver that hands JSON back as text
            config = json.loads(config)
        new = change(config)
        if new != config:
            bind.execute(_studies.update().where(_studies.c.id == study_id).values(config=new))


def fill_study_configs(before: Mapping[str, Any], revision: str) -> None:
    """Give every stored config the fields of ``before`` it lacks (online only: offline
    SQL is for a database with no studies yet)."""
    if context.is_offline_mode():
        op.execute(f"-- {revision}: fill old study configs by running `stagelr migrate` online")
        return
    _rewrite(lambda config: {**before, **config})


def strip_study_configs(before: Mapping[str, Any]) -> None:
    """Take the fields of ``before`` out of every stored config."""
    if context.is_offline_mode():
        return
    _rewrite(lambda config: {k: v for k, v in config.items() if k not in before})
