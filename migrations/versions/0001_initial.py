"""The initial schema: projects, studies, stages, segments, observations, forecasts.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Hand-checked against stagelr_service.store.models; tests/store/test_migrations.py compares the
two. Types are spelled out here (no imports from the application) so that this file keeps
describing revision 0001 whatever the models become.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Stored as naive UTC on SQLite, timestamptz on PostgreSQL (models.UTCDateTime).
_Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", _Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("updated_at", _Time, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_studies_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_studies_project_id_name")),
    )
    with op.batch_alter_table("studies") as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_studies_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("tau", sa.Integer(), nullable=False),
        sa.Column("tau_explore", sa.Integer(), nullable=False),
        sa.Column("start_step", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("chosen_lr", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_stages_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stages")),
        sa.UniqueConstraint("study_id", "index", name=op.f("uq_stages_study_id_index")),
    )
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("start_step", sa.BigInteger(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("report_every", sa.Integer(), nullable=False),
        sa.Column("restore", sa.String(length=200), nullable=True),
        sa.Column("save_start", sa.String(length=200), nullable=True),
        sa.Column("save_end", sa.String(length=200), nullable=True),
        sa.Column("discard", sa.JSON(), nullable=False),
        sa.Column("stop_above", sa.Float(), nullable=True),
        sa.Column("data_seed", sa.BigInteger(), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=True),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("completed_at", _Time, nullable=True),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["stages.id"],
            name=op.f("fk_segments_stage_id_stages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_segments_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        # The concurrency guard: one segment per (study, seq).
        sa.UniqueConstraint("study_id", "seq", name=op.f("uq_segments_study_id_seq")),
    )
    with op.batch_alter_table("segments") as batch_op:
        batch_op.create_index(batch_op.f("ix_segments_stage_id"), ["stage_id"], unique=False)

    op.create_table(
        "observations",
        # 64-bit on PostgreSQL; SQLite's INTEGER primary key is the 64-bit rowid.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        # NULL with special = 'nan' | 'inf' | '-inf' for non-finite values.
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("special", sa.String(length=4), nullable=True),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_observations_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint(
            "segment_id", "step", "metric", name=op.f("uq_observations_segment_id_step_metric")
        ),
    )
    op.create_table(
        "forecasts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("prediction", sa.Float(), nullable=True),
        sa.Column("std", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("created_at", _Time, nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_forecasts_segment_id_segments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forecasts")),
        sa.UniqueConstraint("segment_id", name=op.f("uq_forecasts_segment_id")),
    )


def downgrade() -> None:
    op.drop_table("forecasts")
    op.drop_table("observations")
    with op.batch_alter_table("segments") as batch_op:
        batch_op.drop_index(batch_op.f("ix_segments_stage_id"))
    op.drop_table("segments")
    op.drop_table("stages")
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_updated_at"))
        batch_op.drop_index(batch_op.f("ix_studies_status"))
    op.drop_table("studies")
    op.drop_table("projects")
