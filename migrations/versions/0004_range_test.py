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

from collections.abc import Sequence
from typing import Any

try:
    from stagelr_migrations.config_fields import fill_study_configs, strip_study_configs
except ImportError:  # a checkout run without the package installed (PYTHONPATH=.)
    from migrations.config_fields import fill_study_configs, strip_study_configs

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


def upgrade() -> None:
    fill_study_configs(_BEFORE, "0004")


def downgrade() -> None:
    strip_study_configs(_BEFORE)
