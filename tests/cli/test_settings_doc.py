"""The settings table in docs/settings.md is the one the Settings class generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stagelr_service.settings import TABLE_END, TABLE_START, Settings, settings_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_doc_is_up_to_date() -> None:
    text = DOC.read_text()
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].lstrip("\n")
    assert documented == settings_table(), (
        "docs/settings.md is out of date: run "
        "`python -m stagelr_service.settings --update docs/settings.md`"
    )


def test_the_table_has_one_row_per_field_with_its_variable_and_meaning() -> None:
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert row.startswith(f"| `STAGELR_{name.upper()}` |")
        assert field.description, f"Settings.{name} needs a description for the docs"


def test_the_generator_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stagelr_service.settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == settings_table()
