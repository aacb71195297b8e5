"""The benchmark scripts run (quick mode) and print their tables. No timing is asserted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    return run_python(str(ROOT / "benchmarks" / script), *args)


def run_python(*argv: str) -> str:
    """``python ARGV`` from the repository root, one torch thread; its stdout (it must
    succeed)."""
    done = subprocess.run(
        [sys.executable, *argv],
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
    for package in ("schedulefree", "prodigyopt", "dadaptation", "dog"):
        pytest.importorskip(package)
    # Two processes, as on a machine of two cores (the runs do not depend on it).
    out = run_module(
        "benchmarks.quality", "--quick", "--jobs", "2",
        "--results", str(tmp_path / "cache"), "--img", str(tmp_path / "img"),
        "--json", str(tmp_path / "q.json"), "--docs", str(tmp_path / "bench.md"),
    )  # fmt: skip
    data = json.loads((tmp_path / "q.json").read_text())
    variants = {v["variant"]: v for v in data["variants"]}
    assert set(variants) == {"nqm-b8", "digits", "charlm", "regression", "cnn"}
    common = {"target", "untuned", "range_test", "schedulefree"}
    rivals = {"sgd": {"dog"}, "adam": {"prodigy", "dadapt"}, "adamw": {"prodigy", "dadapt"}}
    for name, summary in variants.items():
        assert summary["runs_missing"] == 0, name
        # stagelr runs on the dev split; on a held-out split only once default is frozen
        ours = {"stagelr-default", "stagelr-autolrs"} if summary["split"] == "dev" else set()
        assert set(summary["methods"]) == common | rivals[summary["family"]] | ours, name
        steps = summary["steps"]
        for method, row in summary["methods"].items():
            # every budget a planned method needed was trained: each seed is read
            assert row["steps_to_target_pending"] == 0, (name, method)
            if method in ("schedulefree", "dog"):  # anytime: one run to 3T, read at T
                assert row["charged_median"] == steps
        if summary["split"] == "dev":
            default = summary["methods"]["stagelr-default"]
            assert default["charged_median"] <= steps  # told its compute: T
            assert default["steps_to_target"] in {"Infinity", steps, 1.5 * steps, 2 * steps,
                                                  3 * steps}  # fmt: skip
        assert (tmp_path / "img" / f"quality-{name}.png").stat().st_size > 10_000
        assert f"#### {name} ({summary['split']} split" in out
    assert "oracle" in variants["nqm-b8"]
    assert set(data["verdicts"]) == {"dev", "test"}
    assert {v["status"] for v in data["verdicts"]["test"].values()} == {
        "not run: default not frozen"
    }
    assert "default not yet run on the test split" in out
    # Every stagelr run's study is kept, as a compressed `stagelr export` file per variant.
    from benchmarks.quality.harness import exported_names, read_records, studies_file

    for name in variants:
        studies = {
            r["run"]["extra"]["study"]
            for r in read_records(tmp_path / "cache" / f"{name}.jsonl.gz")
            if r["method"].startswith("stagelr-")
        }
        if variants[name]["split"] != "dev":
            assert not studies, name  # no stagelr run on a held-out split before it is frozen
            continue
        assert studies and exported_names(studies_file(tmp_path / "cache", name)) == studies
    assert "<!-- quality:begin -->" in (tmp_path / "bench.md").read_text()
    # Every result names the machine that trained it, and the report counts them; the
    # cache is gzip-compressed JSON lines.
    records = [r for path in (tmp_path / "cache").glob("*.jsonl.gz") for r in read_records(path)]
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


@pytest.mark.timeout(600)
def test_an_interrupted_quality_run_has_exported_the_studies_of_the_runs_it_kept(
    tmp_path,
) -> None:
    """Each stagelr run's study is in the variant's export file by the time the run is
    logged, not only once the variant is done: the server's scratch database is not
    committed, so a benchmark stopped mid-variant would otherwise lose its studies."""
    from benchmarks.quality.harness import exported_names, read_records, studies_file

    cache = tmp_path / "cache"
    bench = subprocess.Popen(
        [
            sys.executable, "-m", "benchmarks.quality", "--quick", "--workload", "nqm-b8",
            "--method", "stagelr-default", "--results", str(cache),
            "--img", str(tmp_path / "img"), "--json", str(tmp_path / "q.json"),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert bench.stdout is not None
    seen = []
    try:
        for line in bench.stdout:
            seen.append(line)
            if " stagelr-default " in line and " seed 0: " in line:
                break
        else:
            pytest.fail("no stagelr run was logged:\n" + "".join(seen))
        # The variant is not done (its budgeted runs follow), and the run is already kept.
        records = read_records(cache / "nqm-b8.jsonl.gz")
        studies = {
            str(r["run"]["extra"]["study"]) for r in records if r["method"].startswith("stagelr-")
        }
        assert studies
        assert studies <= exported_names(studies_file(cache, "nqm-b8"))
    finally:
        bench.terminate()
        bench.communicate(timeout=120)


def test_load_quick_drives_a_live_server_with_concurrent_jobs(tmp_path) -> None:
    pytest.importorskip("psutil")
    out = run("load.py", "--quick", "--json", str(tmp_path / "load.json"))
    assert "decision p50/p95/p99 ms" in out and "anchors:" in out
    row = json.loads((tmp_path / "load.json").read_text())["rows"][0]
    assert row["backend"] == "sqlite" and row["jobs"] == 5
    assert row["workers"] == 2  # the several-process server: `stagelr serve --workers 2`
    # a stage each: ten windows, the best one's check, the LR served (11 decisions a job)
    assert row["decisions"] == 55 and row["errors"] == 0
    assert row["points"] > 0 and row["server_rss_mb"] > 0
    # Read from the server's /metrics: each job's first `next`, then one complete-and-next
    # per decision.
    inside = row["server_side_mean_ms"]
    assert inside["next"] > 0 and inside["complete-and-next"] > 0
    assert "inside the server" in out
    # When the decisions came, and what they waited, third by third of the run.
    pattern = row["arrivals"]
    assert pattern["per_s"]["mean"] > 0 and len(pattern["p50_ms_by_third"]) == 3
    assert "decisions arriving per s" in out


def test_load_baseline_rows_run_the_baseline_trees_client_too(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    before = tmp_path / "before"
    for part in ("client", "service"):
        shutil.copytree(ROOT / part, before / part, ignore=shutil.ignore_patterns("__pycache__"))
    out = run(
        "load.py", "--quick", "--baseline-tree", str(before), "--json", str(tmp_path / "l.json")
    )
    assert " old " in out and " new " in out, out
    rows = {r["code"]: r for r in json.loads((tmp_path / "l.json").read_text())["rows"]}
    # each row's jobs imported their own tree's client, as its servers ran their code
    assert rows["old"]["client_code"] == [str(before / "client" / "stagelr")]
    assert rows["new"]["client_code"] == [str(ROOT / "client" / "stagelr")]
    assert rows["old"]["errors"] == 0 and rows["new"]["errors"] == 0


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


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_decision_instructions_counts_a_decision_and_compares_two_trees(tmp_path: Path) -> None:
    out = run("decision_instructions.py", "--studies", "1", "--json", str(tmp_path / "i.json"))
    assert "M instructions each" in out, out
    (row,) = json.loads((tmp_path / "i.json").read_text())["rows"]
    assert row["decisions"] == 10 and row["per_decision_m"] > 1.0
    # Two trees (the comparison's own logic; a second valgrind run costs a minute of CI).
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from decision_instructions import report
    finally:
        sys.path.pop(0)
    cheaper = {**row, "tree": "new", "instructions": row["instructions"] * 0.9}
    assert "new / old: 0.900 (the same decisions)" in report([row, cheaper], "sqlite")
    other = {**cheaper, "lrs": "0" * 16}
    assert "(DIFFERENT decisions)" in report([row, other], "sqlite")


def test_decision_instructions_runs_this_checkouts_code_not_the_installed_one() -> None:
    # A worktree sharing another checkout's virtual environment (whose editable install
    # points there) measured that checkout as "this tree": the children must put their
    # own tree first.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from decision_instructions import child_env
        from trees import ROOT as SCRIPT_ROOT
    finally:
        sys.path.pop(0)
    mine = child_env(None)["PYTHONPATH"].split(os.pathsep)
    assert mine == [str(SCRIPT_ROOT / "client"), str(SCRIPT_ROOT / "service"), str(SCRIPT_ROOT)]
    other = Path("/elsewhere")
    assert child_env(other)["PYTHONPATH"].split(os.pathsep)[0] == str(other / "client")
    assert child_env(None)["OMP_NUM_THREADS"] == "1"


def test_client_cost_measures_two_trees_side_by_side(tmp_path: Path) -> None:
    # This checkout as its own baseline: both rows run, and the ratio is printed.
    out = run(
        "client_cost.py", "--repeats", "1", "--clients", "2", "--requests", "5",
        "--baseline-tree", str(ROOT), "--json", str(tmp_path / "c.json"),
    )  # fmt: skip
    assert "new / old Client():" in out and "new / old health():" in out, out
    rounds = json.loads((tmp_path / "c.json").read_text())["rounds"]
    assert set(rounds) == {str(ROOT), "this tree"}
    for figures in rounds.values():
        assert figures["client_ms"][0] > 0 and figures["health_ms"][0] > 0


def test_the_probe_compares_default_with_overrides_on_the_same_seeds() -> None:
    out = run_module(
        "benchmarks.quality.probe", "--variant", "nqm-b8", "--seeds", "2",
        "--config", 'previous={"selection": "min_forecast", "decay_fraction": 0.0}',
    )  # fmt: skip
    rows = dict(re.findall(r"^nqm-b8 (\w+): median (\S+)", out, flags=re.M))
    assert set(rows) == {"default", "previous"}
    # each line names the seeds whose runs end above the last report's target
    assert len(re.findall(r"ends at it \d+/2 \(misses \[[\d, ]*\]\)", out)) == 2
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


def test_the_horizon_diagnostic_reads_the_best_peak_at_each_horizon(tmp_path: Path) -> None:
    runs = tmp_path / "horizon.json"
    argv = ["benchmarks.quality.horizon", "--variant", "nqm-b64", "--seeds", "1"]
    out = run_module(*argv, "--budget", "0.04", "--budget", "0.12", "--runs", str(runs))
    rows = re.findall(r"^\| (\S+)T \| (.*) \| (\S+) \| (\S+) \|$", out, flags=re.M)
    # both short horizons, and the full-length grid from the committed cache
    assert [r[0] for r in rows] == ["0.04", "0.12", "1"]
    for _, cells, best, vertex in rows:
        losses = [float(c) for c in cells.split(" | ")]
        assert len(losses) == 8 and all(v > 0 for v in losses)
        assert float(best) > 0 and float(vertex) > 0
    # the NQM's longer runs end lower at every peak
    short, longer = ([float(c) for c in r[1].split(" | ")] for r in rows[:2])
    assert all(b < a for a, b in zip(short, longer, strict=True))
    assert "best peak from 0.04T to 0.12T" in out and "extrapolated from 0.04T and 0.12T" in out
    # the runs are kept: a second call trains nothing and prints the same
    kept = json.loads(runs.read_text())
    assert len(kept) == 16
    assert run_module(*argv, "--budget", "0.04", "--budget", "0.12", "--runs", str(runs)) == out
    # Short runs warmed up over half their length: kept apart, and they end elsewhere.
    warm = run_module(*argv, "--budget", "0.04", "--warmup", "0.5", "--runs", str(runs))
    assert "short runs warmed up over 50%" in warm
    assert len(json.loads(runs.read_text())) == 24
    (row,) = re.findall(r"^\| 0.04T \| (.*) \| \S+ \| \S+ \|$", warm, flags=re.M)
    assert row != rows[0][1]


def test_the_horizon_diagnostic_branches_every_window_off_one_warm_trunk(tmp_path: Path) -> None:
    from benchmarks.quality import horizon
    from benchmarks.quality.workloads import VARIANTS, make_job

    variant = VARIANTS["nqm-b64"]
    # the trunk's top LR is the centre of the coolest third of the range, in log-LR
    low, high = min(variant.grid), max(variant.grid)
    assert horizon.trunk_lr(variant) == pytest.approx(low * (high / low) ** (1 / 6))
    table = horizon.trunk_windows(variant, 0, 0.04)
    assert sorted(table) == sorted(variant.grid)
    # each window starts from the trunk's state: the window at the grid's coolest peak,
    # trained by hand from that state, ends where the diagnostic's does
    steps = round(0.04 * variant.steps)
    job = make_job(variant, 0)
    for t in range(steps):
        job.train_step(t, horizon.trunk_lr(variant) * (t + 1) / steps)
    for i in range(steps):
        job.train_step(steps + i, horizon.methods.schedule_lr("wsd", low, i, steps, 0))
    assert table[low] == pytest.approx(job.val_loss(), rel=1e-12)
    # and not from the job's first state: the cold window at that peak ends elsewhere
    cold = make_job(variant, 0)
    for i in range(steps):
        cold.train_step(i, horizon.methods.schedule_lr("wsd", low, i, steps, 0))
    assert cold.val_loss() != pytest.approx(table[low], rel=1e-6)
    runs = tmp_path / "horizon.json"
    argv = ["benchmarks.quality.horizon", "--variant", "nqm-b64", "--seeds", "1"]
    out = run_module(*argv, "--budget", "0.04", "--trunk", "--runs", str(runs))
    assert "short runs off a warm trunk" in out
    (row,) = re.findall(r"^\| 0.04T \| (.*) \| \S+ \| \S+ \|$", out, flags=re.M)
    assert float(row.split(" | ")[0]) == pytest.approx(table[low], rel=1e-3)


def test_the_midrun_diagnostic_compares_windows_with_the_rest_of_the_run(tmp_path: Path) -> None:
    from benchmarks.quality import midrun
    from benchmarks.quality.workloads import VARIANTS

    variant = VARIANTS["nqm-b64"]
    result = midrun.measure(variant, 0, 0.5, 0.3, 0.04, [0.5, 1.0, 2.0])
    assert result is not None and set(result) == {"window", "truth"}
    # the rest of the run is far longer than a window, so it ends far lower at every LR
    for f in ("0.5", "1.0", "2.0"):
        assert result["truth"][f] < result["window"][f]
    # on the NQM (the best peak is the top of its range) more LR is better for the rest
    assert result["truth"]["2.0"] < result["truth"]["1.0"] < result["truth"]["0.5"]
    runs = tmp_path / "midrun.json"
    argv = ["benchmarks.quality.midrun", "--variant", "nqm-b64", "--seeds", "1",
            "--miss", "0.25", "--factor", "1", "--factor", "2", "--runs", str(runs)]  # fmt: skip
    out = run_module(*argv)
    (row,) = re.findall(
        r"^\| 0.25 \| (.*) \| x(\S+) \| x(\S+) \| (\S+) \| (\S+) \|$", out, flags=re.M
    )
    assert row[2] == "2"  # the truth picks the hotter LR
    # the window's pick against holding: zero if it holds, the truth's gain if it moves
    assert float(row[4]) == 0.0 if row[1] == "1" else float(row[4]) < 0
    assert len(json.loads(runs.read_text())) == 1
    assert run_module(*argv) == out  # kept: a second call trains nothing


def test_the_ceiling_splits_defaults_gap_into_the_searchs_cost_and_its_choice(
    tmp_path: Path,
) -> None:
    from benchmarks.quality import ceiling

    from stagelr_service.tuner import fit_charged_budget, planned_charge
    from stagelr_service.tuner.config import resolve

    # the share of T that default's plan trains: its trajectory, not its search
    share = ceiling.trajectory_share("nqm-b64")
    config = fit_charged_budget(
        resolve({"preset": "default", "lr_min": 0.015625, "lr_max": 1.9, "charged_steps": 1000})
    )
    assert config.total_steps is not None and share == config.total_steps / 1000
    assert planned_charge(config) <= 1000 and 0.5 < share < 1.0
    runs = tmp_path / "ceiling.json"
    out = run_module("benchmarks.quality.ceiling", "--variant", "nqm-b64", "--runs", str(runs))
    (row,) = re.findall(r"^\| nqm-b64 \| (.*) \|$", out, flags=re.M)
    cells = row.split(" | ")
    target, ceiling_cell, default = float(cells[1]), cells[2], float(cells[3])
    value = float(ceiling_cell.split()[0])
    # the two parts add up to default's gap to the target
    assert float(cells[5]) == pytest.approx(value - target, abs=1e-4)
    assert float(cells[6]) == pytest.approx(default - value, abs=1e-4)
    # fewer steps at the same peak end higher on the NQM
    assert value > target
    assert len(json.loads(runs.read_text())) == 10  # the report's ten seeds, kept
    # a cheaper search: planned for 95% of T, the same peak ends lower
    argv = ["--variant", "nqm-b64", "--share", "0.95", "--runs", str(runs)]
    (cheaper,) = re.findall(
        r"^\| nqm-b64 \| (.*) \|$", run_module("benchmarks.quality.ceiling", *argv), flags=re.M
    )
    assert cheaper.split(" | ")[0] == "0.95"
    assert float(cheaper.split(" | ")[2].split()[0]) < value
    assert len(json.loads(runs.read_text())) == 20
    # a held-out split default has not been judged on is refused: the committed report
    # beside a results folder that records no frozen commit for test4
    unjudged = tmp_path / "unjudged"
    (unjudged / "quality").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "results" / "quality.json", unjudged / "quality.json")
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality.ceiling", "--variant", "lorenz",
         "--runs", str(runs), "--report", str(unjudged / "quality.json")],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "held out" in bad.stderr


def test_devsplit_compares_on_a_held_out_split_only_once_default_was_judged_there(
    tmp_path: Path,
) -> None:
    from benchmarks.quality import devsplit, harness

    # No frozen commit recorded for either held-out split: both are refused.
    assert devsplit.split_check(["digits", "cnn", "lstm"], tmp_path) == (["cnn", "lstm"], [])
    harness.frozen_file(tmp_path, "test").write_text('{"commit": "abc1234"}')
    # The test split was read at its frozen commit: allowed, and said to be spent.
    assert devsplit.split_check(["digits", "cnn", "lstm"], tmp_path) == (["lstm"], ["test"])
    assert devsplit.split_check(["digits"], tmp_path) == ([], [])
    # The command refuses the unjudged split before it trains anything.
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality.devsplit", "--variant", "lstm",
         "--config", "a=default:{}", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "lstm: held out" in bad.stderr


def test_devsplit_counts_each_configs_wins_against_the_reports_best_rival() -> None:
    from benchmarks.quality import devsplit

    def row(variant: str, level: float | None) -> dict[str, object]:
        if level is None:
            return {"variant": variant, "best_rival": None, "methods": {}}
        rival = {"label": "DoG + averaging", "final_median": level}
        return {"variant": variant, "best_rival": "dog", "methods": {"dog": rival}}

    medians = {
        "nqm-b64": {"base": 0.515, "c1": 0.482},
        "digits": {"base": 0.0626, "c1": 0.0617},
        "cnn-ft": {"base": 0.0231, "c1": 0.0416},
        "new": {"base": 1.0, "c1": 1.0},  # the report names no rival: left out
    }
    rows = [row("nqm-b64", 0.484), row("digits", 0.0645), row("cnn-ft", 0.0223), row("new", None)]
    lines = devsplit.rival_table(medians, rows, ["base", "c1"])
    assert lines[0].startswith("| variant | `base` | `c1` | best rival |")
    assert lines[2] == "| nqm-b64 | 0.515 | 0.482 | DoG + averaging 0.484 | no | yes |"
    assert lines[3].endswith("| yes | yes |") and lines[4].endswith("| no | no |")
    assert len(lines) == 6 and "new" not in "".join(lines)
    assert lines[-1] == "wins against the best rival: base 1 of 3, c1 2 of 3"
