"""The client package stays thin: what `import stagelr` loads, and what it exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import stagelr

HEAVY = ["torch", "numpy", "fastapi", "sqlalchemy", "botorch", "gpytorch", "stagelr_service"]


def test_import_stagelr_loads_no_heavy_module() -> None:
    code = (
        "import json, sys, stagelr, stagelr.models, stagelr.schedule; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    client_dir = Path(stagelr.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(client_dir)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )

    assert json.loads(out.stdout) == []


def test_all_is_sorted() -> None:
    assert stagelr.__all__ == sorted(stagelr.__all__)


def test_every_name_in_all_resolves() -> None:
    for name in stagelr.__all__:
        assert getattr(stagelr, name) is not None, name


def test_public_classes_belong_to_the_package() -> None:
    for name in stagelr.__all__:
        obj = getattr(stagelr, name)
        if isinstance(obj, type):
            assert obj.__module__ == "stagelr", name
