"""The rooms keep their doors: what the running server imports, and what crosses a
module boundary.

- the server's runtime (the app, the CLI) never loads the testing helpers nor the
  migrations' own helpers;
- replay does not import the study service (the history converters sit below both);
- no private name (``_name``) is imported from another module of the two packages.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import stagelr
import stagelr_service

ROOTS = [Path(stagelr.__file__).parent, Path(stagelr_service.__file__).parent]


def loaded_by(code: str) -> list[str]:
    """The stagelr modules a fresh interpreter has loaded after running ``code``."""
    wanted = "m.startswith(('stagelr', 'migrations'))"
    script = (
        f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if {wanted})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_running_server_loads_no_testing_or_migration_helper() -> None:
    loaded = loaded_by(
        "from stagelr_service.api.app import create_app\n"
        "from stagelr_service import cli, server, replay, exchange, studies"
    )
    assert "stagelr_service.api.app" in loaded
    assert not [m for m in loaded if ".testing" in m or "config_fields" in m], loaded


def test_replay_does_not_import_the_study_service() -> None:
    loaded = loaded_by("import stagelr_service.replay")
    assert "stagelr_service.history" in loaded
    assert "stagelr_service.studies" not in loaded


def test_no_private_name_crosses_a_module() -> None:
    crossing = []
    for root in ROOTS:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").startswith("stagelr")
                ):
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            crossing.append(f"{path.name}: {node.module}.{alias.name}")
    assert not crossing, crossing
