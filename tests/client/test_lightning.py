"""stagelr.lightning: a LightningModule trained under the callback against a live server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.framework_runs import check_trained_as_planned, run_example


@pytest.mark.slow
def test_a_lightning_module_trains_a_whole_study_through_the_callback(
    live_server, tmp_path
) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    out = tmp_path / "lightning.json"
    stdout = run_example(
        "lightning_digits.py",
        f"--url={live_server.url}",
        "--study=lit-digits",
        "--total-steps=60",
        "--tau0=20",
        f"--out={out}",
    )
    record = check_trained_as_planned(live_server.url, out)
    # Two stages (20 and 28 steps): three candidates, the best one's check window and
    # the first stage's training segment, the second trained on at its LR (the default
    # holds it to the decay), then the default's final decay (the last 12 steps).
    assert len(record["segments"]) == 7
    assert "completed: 7 segments" in stdout


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("stagelr.lightning", "lightning", "lightning"),
        ("stagelr.transformers", "transformers", "transformers"),
    ],
)
def test_importing_an_integration_without_its_framework_names_the_extra(
    module: str, framework: str, extra: str
) -> None:
    # None in sys.modules makes `import <framework>` raise ImportError, as if absent.
    code = f"import sys; sys.modules[{framework!r}] = None; import {module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ImportError" in done.stderr
    assert f'pip install "stagelr[{extra}]"' in done.stderr
