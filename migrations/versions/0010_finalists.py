"""The finalists config field on stored studies.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Configs are stored resolved (every field filled), so a config written before the
finalists' stability check existed lacks ``finalists``. It is filled with 0, the search
without a check that every study ran then, so that no stored study changes its decisions.
The value is spelled out here, as it was on the day of this revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from stagelr_migrations.config_fields import fill_study_configs, strip_study_configs
except ImportError:  # a checkout run without the package installed (PYTHONPATH=.)
    from migrations.config_fields import fill_study_configs, strip_study_configs

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {"finalists": 0}


def upgrade() -> None:
    fill_study_configs(_BEFORE, "0010")


def downgrade() -> None:
    strip_study_configs(_BEFORE)
