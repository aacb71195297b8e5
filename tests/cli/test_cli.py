"""The `stagelr` command line: migrate, and serve's refusal of an unmigrated database."""

from __future__ import annotations

import sqlite3

import pytest

from tests.live import run_cli

pytestmark = pytest.mark.slow


def test_serve_refuses_an_unmigrated_database_naming_stagelr_migrate(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done = run_cli("serve", "--port", "0", env={"STAGELR_DATABASE_URL": url})
    assert done.returncode == 2
    assert "stagelr migrate" in done.stderr
    assert "Traceback" not in done.stderr


def test_migrate_creates_the_schema_in_the_default_data_dir(tmp_path) -> None:
    done = run_cli("migrate", env={"STAGELR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert "schema revision" in done.stdout
    with sqlite3.connect(tmp_path / "data" / "stagelr.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"projects", "studies", "stages", "segments", "observations", "forecasts"} <= tables
    assert journal == "wal"


def test_migrate_twice_is_harmless(tmp_path) -> None:
    env = {"STAGELR_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    assert run_cli("migrate", env=env).returncode == 0
    assert run_cli("migrate", env=env).returncode == 0


def test_a_bad_setting_is_reported_by_name(tmp_path) -> None:
    done = run_cli("migrate", env={"STAGELR_LOG_LEVEL": "loud"})
    assert done.returncode != 0
    assert "log_level" in done.stderr


def test_demo_without_a_server_says_what_to_give() -> None:
    done = run_cli("demo")
    assert done.returncode == 2
    assert "--url" in done.stderr and "--local" in done.stderr
