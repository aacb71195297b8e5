"""The benchmark scripts run (quick mode) and print their tables. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_decision_latency_quick_prints_both_paths(tmp_path) -> None:
    out = run("decision_latency.py", "--quick", "--json", str(tmp_path / "d.json"))
    assert "fast path: GPOptimizer.propose" in out and "reference: fit_gpytorch_mll" in out
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["fast"] and data["reference"]


def test_service_latency_quick_drives_a_live_server(tmp_path) -> None:
    out = run("service_latency.py", "--quick", "--json", str(tmp_path / "s.json"))
    assert "decision p50/p95/p99 ms" in out
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert rows[0]["jobs"] == 1 and rows[0]["decisions"] > 0


def test_plots_are_drawn_from_the_committed_results(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = run("plot_results.py", "--out", str(tmp_path))
    assert (tmp_path / "decision_latency.png").stat().st_size > 10_000
    assert (tmp_path / "demo_run.png").stat().st_size > 10_000
    assert "skipped" not in out


def test_forecast_quality_quick_ranks_with_every_forecaster(tmp_path) -> None:
    out = run("forecast_quality.py", "--quick", "--json", str(tmp_path / "f.json"))
    assert "regret median / mean" in out
    row = json.loads((tmp_path / "f.json").read_text())["rows"][0]
    assert {"last value", "robust", "exp_reference", "robust (train)"} <= set(row)


def test_digits_variants_runs_two_variants_through_the_service(tmp_path) -> None:
    out = run(
        "digits_variants.py", "--variant", "default", "--variant", "ref:forecast=exp_reference",
        "--seeds", "0", "--total-steps", "80", "--tau0", "40", "--tau-max", "40", "--k", "2",
        "--json", str(tmp_path / "v.json"),
    )  # fmt: skip
    assert "paired diff to default" in out
    results = json.loads((tmp_path / "v.json").read_text())["results"]
    assert set(results) == {"default", "ref"}
