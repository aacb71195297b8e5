"""The annealed probe's config field on stored studies.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Configs are stored resolved (every field filled), so a config written before the annealed
probe existed lacks ``probe``. It is filled with "constant", the constant-LR window every
candidate trained then, so that no stored study changes its decisions. The value is
spelled out here, as it was on the day of this revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from stagelr_migrations.config_fields import fill_study_configs, strip_study_configs
except ImportError:  # a checkout run without the package installed (PYTHONPATH=.)
    from migrations.config_fields import fill_study_configs, strip_study_configs

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {"probe": "constant"}


def upgrade() -> None:
    fill_study_configs(_BEFORE, "0009")


def downgrade() -> None:
    strip_study_configs(_BEFORE)
