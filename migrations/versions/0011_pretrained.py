"""The pretrained and horizon_scale config fields on stored studies.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Configs are stored resolved (every field filled), so a config written before a job could
declare a trained start lacks ``pretrained`` and ``horizon_scale``. They are filled with
false and 1 (the first search's choice held as it is, its windows' rise an instability),
what every study did then, so that no stored study changes its decisions. The values
are spelled out here, as they were on the day of this revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from stagelr_migrations.config_fields import fill_study_configs, strip_study_configs
except ImportError:  # a checkout run without the package installed (PYTHONPATH=.)
    from migrations.config_fields import fill_study_configs, strip_study_configs

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {"pretrained": False, "horizon_scale": 1.0}


def upgrade() -> None:
    fill_study_configs(_BEFORE, "0011")


def downgrade() -> None:
    strip_study_configs(_BEFORE)
