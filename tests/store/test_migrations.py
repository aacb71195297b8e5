"""Alembic migrations: one history that runs on SQLite and PostgreSQL, matches the
models, and a server that refuses any schema but the current one."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL

from stagelr_service.errors import SchemaOutdatedError
from stagelr_service.store import (
    Store,
    check_schema,
    downgrade,
    make_engine,
    migrate,
    normalize_url,
)
from stagelr_service.store.models import Base
from stagelr_service.store.schema import alembic_config, script_location
from tests.store_fixtures import (
    BACKENDS,
    fresh_database,
    fresh_postgres_database,
    postgres_admin_url,
)

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "projects",
    "studies",
    "stages",
    "segments",
    "observations",
    "forecasts",
    "tokens",
    "outages",
}

#: The newest revision of this version's history.
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
assert HEAD is not None

# A later revision, to test that a database one revision behind is refused and upgraded.
NEXT_REVISION = f"""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("note")
"""


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def tables(url: URL) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def schema_check(url: URL, location: Path | None = None) -> str:
    engine = make_engine(url)
    try:
        return check_schema(engine, location=location)
    finally:
        engine.dispose()


def test_an_empty_database_is_refused_naming_stagelr_migrate(empty_database: URL) -> None:
    with pytest.raises(SchemaOutdatedError, match="has no stagelr schema") as caught:
        schema_check(empty_database)
    assert "`stagelr migrate`" in caught.value.message


def test_upgrade_to_head_creates_the_schema_and_passes_the_check(empty_database: URL) -> None:
    assert migrate(empty_database) == HEAD
    assert tables(empty_database) == TABLES
    assert schema_check(empty_database) == HEAD
    with Store(empty_database) as store:
        assert store.check_schema() == HEAD


def test_migrate_twice_is_a_no_op(empty_database: URL) -> None:
    migrate(empty_database)
    with Store(empty_database) as store:
        with store.transaction() as repo:
            repo.get_or_create_project("kept")
        assert store.migrate() == HEAD
        with store.transaction(read_only=True) as repo:
            assert repo.get_project("kept") is not None


def test_the_migrated_schema_matches_the_models(empty_database: URL) -> None:
    migrate(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_then_upgrade_round_trips(empty_database: URL) -> None:
    migrate(empty_database)
    assert downgrade(empty_database, "base") == ""
    assert tables(empty_database) == set()
    assert migrate(empty_database) == HEAD
    assert tables(empty_database) == TABLES
    assert schema_check(empty_database) == HEAD


def test_a_downgraded_database_is_refused(empty_database: URL) -> None:
    migrate(empty_database)
    downgrade(empty_database, "base")
    with pytest.raises(SchemaOutdatedError, match="`stagelr migrate`"):
        schema_check(empty_database)


def test_a_database_one_revision_behind_is_refused_then_upgraded(
    empty_database: URL, tmp_path: Path
) -> None:
    newer = tmp_path / "newer_migrations"
    shutil.copytree(script_location(), newer, ignore=shutil.ignore_patterns("__pycache__"))
    (newer / "versions" / "9999_note.py").write_text(NEXT_REVISION)
    migrate(empty_database)  # this version's head

    with pytest.raises(SchemaOutdatedError, match=f"at schema revision {HEAD}") as caught:
        schema_check(empty_database, location=newer)
    assert "needs 9999" in caught.value.message
    assert "`stagelr migrate`" in caught.value.message

    assert migrate(empty_database, location=newer) == "9999"
    assert schema_check(empty_database, location=newer) == "9999"
    assert downgrade(empty_database, HEAD, location=newer) == HEAD


def test_a_schema_from_a_newer_stagelr_is_refused_naming_an_upgrade(
    empty_database: URL,
) -> None:
    migrate(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaOutdatedError, match="does not know") as caught:
        schema_check(empty_database)
    assert "upgrade stagelr" in caught.value.message


@pytest.mark.postgres
@pytest.mark.skipif(postgres_admin_url() is None, reason="needs STAGELR_TEST_POSTGRES_URL")
def test_the_refusal_masks_the_database_password() -> None:
    admin = postgres_admin_url()
    assert admin is not None
    # A trust-auth test server ignores the password; the message must not show it.
    with (
        fresh_postgres_database(admin, password="s3cret-pw") as url,
        pytest.raises(SchemaOutdatedError) as caught,
    ):
        schema_check(url)
    assert "s3cret-pw" not in caught.value.message
    assert "***" in caught.value.message


def test_the_developer_alembic_ini_runs_the_same_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    config = Config(REPO / "alembic.ini", attributes={"configure_logger": False})
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")
    command.check(config)  # autogenerate finds nothing to add: models and history agree
    assert schema_check(normalize_url(url)) == HEAD


def test_offline_mode_writes_the_sql(tmp_path: Path) -> None:
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'offline.db'}")
    out = io.StringIO()
    config.stdout = out
    with redirect_stdout(out):
        command.upgrade(config, "head", sql=True)
    assert "CREATE TABLE observations" in out.getvalue()


def test_0003_to_0006_fill_the_new_fields_of_older_studies_with_their_old_meaning(
    empty_database: URL,
) -> None:
    """A study stored before the planner and the range test existed keeps deciding as it
    did: fixed stages, no decay, no continuation, one data seed per stage, the given
    bounds; its segments are constant-LR."""
    import json

    from stagelr.models import StudyConfig
    from stagelr_service.tuner import LEGACY_CONFIG, resolve

    assert migrate(empty_database, revision="0002") == "0002"
    old = resolve(StudyConfig(lr_min=1e-3, lr_max=1.0, total_steps=500)).to_stored()
    for key in LEGACY_CONFIG:
        old.pop(key)
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES (1, 'p', :t)"),
                {"t": "2026-01-01 00:00:00"},
            )
            conn.execute(
                text(
                    "INSERT INTO studies (id, project_id, name, status, config, created_at, "
                    "updated_at) VALUES (1, 1, 'old', 'running', :c, :t, :t)"
                ),
                {"c": json.dumps(old), "t": "2026-01-01 00:00:00"},
            )
        assert migrate(empty_database) == HEAD
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT config FROM studies WHERE id = 1")).scalar_one()
    finally:
        engine.dispose()
    config = json.loads(stored) if isinstance(stored, str) else stored
    assert {k: config[k] for k in LEGACY_CONFIG} == LEGACY_CONFIG
    assert {k: config[k] for k in old} == old  # nothing else changed
    resolved = StudyConfig.model_validate({k: v for k, v in config.items() if k != "warm_start"})
    assert resolved.planner == "fixed" and resolved.decay_fraction == 0.0
    assert resolved.lr_bounds == "given"
    assert resolved.initial_design == 1
    assert resolved.probe == "constant"
    assert resolved.finalists == 0  # 0010: no check of the choice, as such a study ran
    # 0011: a fresh start, the windows' choice held as it is, as such a study ran
    assert resolved.pretrained is False and resolved.horizon_scale == 1.0

    # Down to 0003 takes out what 0004 and 0006 filled in, and keeps the rest.
    assert downgrade(empty_database, "0003") == "0003"
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT config FROM studies WHERE id = 1")).scalar_one()
    finally:
        engine.dispose()
    config = json.loads(stored) if isinstance(stored, str) else stored
    gone = {"initial_design", "lr_bounds", "range_test_steps", "range_test_decades", "finalists"}
    gone |= {"pretrained", "horizon_scale"}
    assert not gone & set(config)
    assert {k: config[k] for k in old} == old and config["planner"] == "fixed"


def _revision_of(file_part: str) -> tuple[str, str]:
    """The revision of the migration whose file name contains ``file_part``, and the
    revision before it (ids may be renumbered when branches merge)."""
    script = ScriptDirectory.from_config(alembic_config())
    for rev in script.walk_revisions():
        if file_part in Path(rev.path).name:
            down = rev.down_revision
            assert isinstance(down, str)
            return rev.revision, down
    raise AssertionError(f"no migration named *{file_part}*")


def test_the_archive_migration_adds_archived_at_and_keeps_every_study_unarchived(
    empty_database: URL,
) -> None:
    """Studies stored before archiving existed stay in the list (archived_at NULL), and
    a downgrade drops the column and keeps the studies."""
    archive, before = _revision_of("_archive")
    assert migrate(empty_database, revision=before) == before
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES (1, 'p', :t)"),
                {"t": "2026-01-01 00:00:00"},
            )
            conn.execute(
                text(
                    "INSERT INTO studies (id, project_id, name, status, config, created_at, "
                    "updated_at) VALUES (1, 1, 'old', 'completed', '{}', :t, :t)"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
        assert migrate(empty_database, revision=archive) == archive
        with engine.connect() as conn:
            assert "archived_at" in {c["name"] for c in inspect(conn).get_columns("studies")}
            assert conn.execute(text("SELECT name, archived_at FROM studies")).all() == [
                ("old", None)
            ]
        assert downgrade(empty_database, before) == before
        with engine.connect() as conn:
            assert "archived_at" not in {c["name"] for c in inspect(conn).get_columns("studies")}
            assert conn.execute(text("SELECT name FROM studies")).scalars().all() == ["old"]
    finally:
        engine.dispose()
