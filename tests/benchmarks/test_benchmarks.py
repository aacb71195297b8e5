"""The benchmark scripts run (quick mode) and print their tables. No timing is asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


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


def run_module(module: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(900)
def test_quality_quick_runs_every_workload_and_method_through_the_service(tmp_path) -> None:
    pytest.importorskip("schedulefree")
    out = run_module(
        "benchmarks.quality", "--quick",
        "--results", str(tmp_path / "cache"), "--img", str(tmp_path / "img"),
        "--json", str(tmp_path / "q.json"), "--docs", str(tmp_path / "bench.md"),
    )  # fmt: skip
    data = json.loads((tmp_path / "q.json").read_text())
    variants = {v["variant"]: v for v in data["variants"]}
    assert set(variants) == {"nqm-b8", "digits", "charlm"}
    for name, summary in variants.items():
        assert summary["runs_done"] == summary["runs_planned"], name
        assert set(summary["methods"]) == {
            "target", "untuned", "range_test", "schedulefree", "stagelr-autolrs",
            "stagelr-default", "stagelr-default-3t",
        }  # fmt: skip
        # default is told its compute: T for the equal-compute row, 3T for the other
        steps = summary["steps"]
        assert summary["methods"]["stagelr-default"]["charged_median"] <= steps
        assert steps < summary["methods"]["stagelr-default-3t"]["charged_median"] <= 3 * steps
        assert (tmp_path / "img" / f"quality-{name}.png").stat().st_size > 10_000
        assert f"#### {name}" in out
        # the grid was trained on the one quick seed, so its reach there is known, and
        # every seed of the 3T run is either a hit or a named miss
        assert set(summary["grid_reach"]) == {"0"}
        three_t = summary["methods"]["stagelr-default-3t"]
        assert three_t["reached_target"] + len(three_t["missed_seeds"]) == len(three_t["seeds"])
        # read run by run, one seed: that run's own steps-to-target (or a miss)
        per_seed = three_t["steps_to_target_per_seed"]
        assert (per_seed == "Infinity") == bool(three_t["missed_seeds"])
        if per_seed != "Infinity":
            assert three_t["tuning_inclusive_ratio_per_seed"] == 8 * steps / per_seed
    assert "oracle" in variants["nqm-b8"]
    assert set(data["verdicts"]) == {"Credible", "Strong", "Moonshot"}
    # Every stagelr run is a study in the benchmark's own SQLite database.
    assert (tmp_path / "cache" / "studies.sqlite3").stat().st_size > 0
    assert "<!-- quality:begin -->" in (tmp_path / "bench.md").read_text()
    # Every result names the machine that trained it, and the report counts them.
    records = [
        json.loads(line)
        for path in (tmp_path / "cache").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert records and all(r["machine"].endswith(" cores") for r in records)
    assert f"Runs by the machine that trained them: {records[0]['machine']} " in out
    # A second run trains nothing: every result comes from the cache.
    again = run_module(
        "benchmarks.quality", "--quick", "--report-only",
        "--results", str(tmp_path / "cache"), "--img", str(tmp_path / "img"),
        "--json", str(tmp_path / "q2.json"),
    )  # fmt: skip
    assert re.search(r"^trained \d+ runs", again, re.M) is None
    assert (
        json.loads((tmp_path / "q2.json").read_text())["variants"]
        == json.loads((tmp_path / "q.json").read_text())["variants"]
    )


def test_load_quick_drives_a_live_server_with_concurrent_jobs(tmp_path) -> None:
    pytest.importorskip("psutil")
    out = run("load.py", "--quick", "--json", str(tmp_path / "load.json"))
    assert "decision p50/p95/p99 ms" in out and "anchors:" in out
    row = json.loads((tmp_path / "load.json").read_text())["rows"][0]
    assert row["backend"] == "sqlite" and row["jobs"] == 5
    assert row["decisions"] == 50 and row["errors"] == 0
    assert row["points"] > 0 and row["server_rss_mb"] > 0
    # Read from the server's /metrics: every timed decision's two requests were served.
    inside = row["server_side_mean_ms"]
    assert inside["next"] > 0 and inside["complete"] > 0
    assert "inside the server" in out


def test_request_ab_pairs_two_servers_call_by_call(tmp_path) -> None:
    python = sys.executable  # the same tree on both sides: the pipeline, not a figure
    out = run(
        "request_ab.py", python, python, "--studies", "2", "--json", str(tmp_path / "ab.json")
    )
    assert "server CPU per request" in out
    rows = json.loads((tmp_path / "ab.json").read_text())["median_cpu"]
    assert set(rows) == {"next", "complete", "get"}
    for row in rows.values():
        assert row["A_ms"] > 0 and row["B_ms"] > 0
        assert row["B_over_A"] == pytest.approx(row["B_ms"] / row["A_ms"])


def test_the_probe_compares_default_with_overrides_on_the_same_seeds() -> None:
    out = run_module(
        "benchmarks.quality.probe", "--variant", "nqm-b8", "--seeds", "2",
        "--config", 'previous={"selection": "min_forecast", "decay_fraction": 0.0}',
    )  # fmt: skip
    rows = dict(re.findall(r"^nqm-b8 (\w+): median (\S+)", out, flags=re.M))
    assert set(rows) == {"default", "previous"}
    # each line names the seeds that miss the last report's target and where the median
    # curve over the seeds reaches it (the tuning-inclusive ratio's figure)
    assert len(re.findall(r"hit \d+/2 \(misses \[[\d, ]*\]\) median curve \S+ min", out)) == 2
    assert len(re.findall(r"first LRs \[\S+, \S+\]", out)) == 2
    # the decay and the hotter LR: the same two seeds end lower than without them
    assert float(rows["default"]) < float(rows["previous"])
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality.probe", "--config", "broken"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2 and "write NAME=JSON" in bad.stderr


def test_seedscan_trains_the_grid_on_every_seed_once_and_tables_each_seeds_reach(
    tmp_path,
) -> None:
    cache = tmp_path / "cache"
    args = ("--quick", "--results", str(cache), "--json", str(tmp_path / "scan.json"))
    out = run_module("benchmarks.quality.seedscan", *args)
    assert re.search(r"digits: trained [1-9]\d* grid runs", out)
    (result,) = json.loads((tmp_path / "scan.json").read_text())["variants"]
    (row,) = result["seeds"]
    # the target is the median final of the best config over the (one) grid seed; a
    # curve's lowest point is at most its final, so the grid reaches it on that seed
    assert row["grid_reaches"] is True and row["grid_lowest"] <= result["target"]
    assert row["method_lowest"] is None  # no stagelr run in this cache
    assert "| 0 | " in out
    again = run_module("benchmarks.quality.seedscan", *args)
    assert "digits: trained 0 grid runs" in again  # cached: nothing retrained
    assert "Per schedule over these 1 seeds: the most seeds at the target" in out
    # every quick grid point (2 peaks x 4 schedules) is summarized; the target config's
    # own run ends at the target, so at least that schedule misses no seed
    assert len(result["schedules"]) == 8
    assert any(r["missed_seeds"] == [] for r in result["schedules"])
    # the config that set the target is named and judged by the same checks: on the
    # one grid seed that set it, it reaches its own target
    chosen = result["target_config"]
    assert chosen is not None and {"schedule", "peak"} <= set(chosen)
    assert re.search(
        rf"The target config itself \({chosen['schedule']} @ {chosen['peak']:g}, whose median "
        r"over the grid seeds set the target\): 1/1 \(misses none\)",
        out,
    )
    # --budget 2: the schedules planned for 2T are runs of their own, in their own cache
    # (not the quality benchmark's), evaluated as often as at T
    longer = run_module(
        "benchmarks.quality.seedscan", *args[:-2], "--budget", "2", "--seed-list", "0",
        "--scan-results", str(tmp_path / "scan"), "--json", str(tmp_path / "scan2.json"),
    )  # fmt: skip
    assert re.search(r"digits: trained [1-9]\d* grid runs", longer)
    assert "within 2T (schedules planned for 2T)" in longer
    (result2,) = json.loads((tmp_path / "scan2.json").read_text())["variants"]
    assert result2["budget"] == 2 and result2["seeds"][0]["seed"] == 0

    def grid_records(folder: Path) -> list[dict]:
        lines = (folder / "digits.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["method"] == "grid"]

    short, long = grid_records(cache), grid_records(tmp_path / "scan")
    assert {r["steps"] for r in long} == {2 * r["steps"] for r in short}
    for r in short + long:  # the same evaluation cadence at either length
        charged = [c for _, c, _ in r["run"]["curve"]]
        assert charged[1] - charged[0] == short[0]["steps"] // 8
