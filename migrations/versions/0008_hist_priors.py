"""Priors: a study's family and the prior summary stored when it was created.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Two nullable columns on ``studies``: ``family`` (what the study list filters on and
priors are read by; indexed with the project) and ``priors`` (the prior summary,
``tuner/_priors.py``). Configs stored before priors existed named none: they get
``family: null``, ``prior_studies: []`` and ``warm_start: null``, which is what they did.
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

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What a config from before this revision meant by the absence of these fields.
_BEFORE: dict[str, Any] = {"family": None, "prior_studies": [], "warm_start": None}


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("family", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("priors", sa.JSON(), nullable=True))
        batch_op.create_index(
            op.f("ix_studies_project_id_studies_family"), ["project_id", "family"], unique=False
        )
    fill_study_configs(_BEFORE, "0008")


def downgrade() -> None:
    strip_study_configs(_BEFORE)
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_index(op.f("ix_studies_project_id_studies_family"))
        batch_op.drop_column("priors")
        batch_op.drop_column("family")
