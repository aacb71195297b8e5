"""The learning-from-history benchmark (benchmarks/quality/history.py): its control's
priors are eligible by fingerprint, its quick path trains and resumes, and its report is
printed from the committed runs. No timing is asserted."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from benchmarks.quality import harness, history, workloads  # noqa: E402
from benchmarks.quality.workloads import VARIANTS  # noqa: E402

from stagelr_service import tuner  # noqa: E402
from tests.benchmarks.test_benchmarks import run_python  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_history(*args: str) -> str:
    return run_python("-m", "benchmarks.quality.history", *args)


def fingerprint_of(variant: object) -> dict[str, object]:
    """The fingerprint of the study tuned.run_stagelr creates for ``variant`` at T."""
    grid = variant.grid  # type: ignore[attr-defined]
    request = {
        "preset": "default",
        "charged_steps": variant.steps,  # type: ignore[attr-defined]
        "lr_min": min(grid),
        "lr_max": max(grid),
    }
    return tuner.fingerprint(tuner.fit_charged_budget(tuner.resolve(request)))


def test_every_control_reads_priors_of_its_own_fingerprint_from_another_workload() -> None:
    assert set(history.VARIANTS) == set(VARIANTS)
    splits = {"dev": history.DEV, "test": history.TEST, "test2": history.TEST2}
    splits["test3"] = history.TEST3
    splits["test4"] = history.TEST4
    splits["test5"] = history.TEST5
    assert tuple(splits) == history.SPLITS == workloads.SPLITS
    for split, names in splits.items():
        assert set(names) == {v.name for v in VARIANTS.values() if v.split == split}
    for name in history.VARIANTS:
        label = history.chain_label(name)
        partner = history.chain_variant(label, quick=False)
        host = VARIANTS[name]
        assert partner.workload != host.workload or partner.params != host.params, name
        assert fingerprint_of(partner) == fingerprint_of(host), name
    # the dev partners share grid and budget: their own families are the priors
    assert history.chain_label("nqm-b8") == "nqm-b64"
    assert history.chain_label("digits-noisy") == "digits"
    # a test partner of another budget would be ignored by fingerprint, so its family is
    # trained at the variant's budget and range
    assert fingerprint_of(VARIANTS["regression-b512"]) != fingerprint_of(VARIANTS["regression"])
    assert history.chain_label("regression") == "regression-b512@regression"
    assert history.chain_variant("regression-b512@regression", quick=False).steps == 1000
    assert history.chain_variant("regression-b512@regression", quick=False).param("batch") == 512
    charrnn = history.chain_variant(history.chain_label("charrnn"), quick=False)
    assert charrnn.workload == "charrnn-ft" and charrnn.grid == VARIANTS["charrnn"].grid
    # the transformer's control: the GRU at its budget and range (charlm-3000 at charlm's
    # budget would be charlm itself)
    for name in ("charlm", "charlm-3000"):
        gru = history.chain_variant(history.chain_label(name), quick=False)
        assert gru.workload == "charrnn" and gru.steps == VARIANTS[name].steps
    assert history.seed_count("charlm", False, None) == 5
    assert history.seed_count("charlm-3000", False, None) == 3
    assert history.seed_count("charlm-3000", False, 2) == 2


def test_a_variant_measured_under_an_earlier_code_keeps_its_rows() -> None:
    def rec(label: str, condition: str, seed: int, code: str, at: str) -> dict[str, object]:
        return {"key": history.run_key(label, condition, seed, code), "label": label,
                "condition": condition, "seed": seed, "code": code, "finished_at": at}  # fmt: skip

    store = {}
    for condition in history.CONDITIONS:
        for seed in (1, 2):
            for r in (rec("a", condition, seed, "old", "1"), rec("b", condition, seed, "new", "2")):
                store[r["key"]] = r
    # b is complete under today's code; a only under the old one; c under none
    assert history.variant_code(store, "b", "new", [1, 2]) == "new"
    assert history.variant_code(store, "a", "new", [1, 2]) == "old"
    assert history.variant_code(store, "c", "new", [1, 2]) == "new"
    # one missing run of the old code: nothing complete, today's code (rows pending)
    del store[history.run_key("a", "mismatch", 2, "old")]
    assert history.variant_code(store, "a", "new", [1, 2]) == "new"


def test_against_reads_two_codes_job_by_job() -> None:
    def rec(label: str, condition: str, seed: int, code: str, final: float) -> dict[str, object]:
        return {"key": history.run_key(label, condition, seed, code), "label": label,
                "condition": condition, "seed": seed, "code": code, "final": final}  # fmt: skip

    store = {}
    old = {1: 0.50, 2: 0.40, 3: 0.30, 4: 0.20}
    new = {1: 0.50, 2: 0.30, 3: 0.20, 4: float("inf")}
    for seed in old:
        for r in (rec("a", "family", seed, "old1234", old[seed]),
                  rec("a", "family", seed, "new5678", new[seed])):  # fmt: skip
            store[r["key"]] = r
    store["x"] = rec("b", "family", 1, "new5678", 0.1)  # only today's code: no row
    lines = history.compare(store, "new5678", "old")
    (row,) = [line for line in lines if line.startswith("a ")]
    # jobs 2 and 3 moved by -0.1 each, job 1 not; job 4 diverged under the new code (the
    # medians count it, the paired difference leaves it out)
    assert re.search(r"family +0\.3500 +0\.4000 +-0\.0667 \[", row), row
    assert "3/4" in row and "(1 diverged, left out)" in row
    assert not [line for line in lines if line.startswith("b ")]
    assert "give a longer prefix" in history.compare(store, "new5678", "zzz")[0]


def test_the_report_is_printed_from_the_committed_runs() -> None:
    assert history.RUNS.exists()
    out = run_history("--report-only")
    # a held-out split whose default is not frozen yet has no runs, by design; a split
    # judged since has none until its family runs are trained: both are pending
    unjudged = set(history.held_out_unjudged(history.VARIANTS))
    pending = set(history.TEST4) | set(history.TEST5)
    assert unjudged <= pending
    trained = {r["label"] for r in history.read_runs(history.RUNS).values()}
    assert not unjudged & trained
    untrained = {n for n in history.VARIANTS if n not in trained} | unjudged
    assert untrained <= pending
    for name in untrained:
        assert re.search(rf"^{re.escape(name)} +pending", out, flags=re.M), (name, out)
    for name in [n for n in history.VARIANTS if n not in untrained]:
        for condition in history.CONDITIONS:
            assert re.search(rf"^{re.escape(name)} +{condition} +\d", out, flags=re.M), (
                name,
                condition,
                out,
            )
        assert not re.search(rf"^{re.escape(name)} +pending", out, flags=re.M)
    assert "-- dev split" in out and "-- test split" in out and "-- test2 split" in out
    # a row whose paired difference is infinite says how many of its jobs diverged
    for line in out.splitlines():
        if "+inf [" in line:
            assert re.search(r"\(\d+ diverged\)$", line), line
    # every target from the committed quality cache
    assert len(re.findall(r"^ +target \d", out, flags=re.M)) == len(history.VARIANTS) - len(
        untrained
    )


@pytest.mark.slow
def test_the_quick_path_trains_a_family_resumes_and_reports_from_its_file(
    tmp_path: Path,
) -> None:
    out = run_history("--quick", "--folder", str(tmp_path))
    runs = tmp_path / "runs.jsonl.gz"
    with gzip.open(runs, "rt") as file:
        records = [json.loads(line) for line in file]
    keys = {(r["label"], r["condition"], r["seed"]) for r in records}
    # job 1 and job 2 of the family, a cold seed, the partner's job 1 and the control
    assert keys == {
        ("nqm-b8", "cold", 0),
        ("nqm-b8", "family", 1),
        ("nqm-b8", "cold", 1),
        ("nqm-b64", "cold", 0),
        ("nqm-b8", "mismatch", 1),
    }
    by = {(r["label"], r["condition"], r["seed"]): r for r in records}
    family, cold = by[("nqm-b8", "family", 1)], by[("nqm-b8", "cold", 1)]
    assert family["use"] in ("used", "fallback") and family["priors"] == [
        by[("nqm-b8", "cold", 0)]["study_id"]
    ]
    mismatch = by[("nqm-b8", "mismatch", 1)]
    assert mismatch["priors"] == [by[("nqm-b64", "cold", 0)]["study_id"]]
    assert mismatch["fits"] == [True] and mismatch["use"] in ("used", "fallback")
    if family["use"] == "used":
        assert family["search"] < cold["search"]
    table = [line for line in out.splitlines() if line.startswith("nqm-b8 ")]
    assert [line.split()[1] for line in table] == ["cold", "family", "mismatch"]
    # a rerun trains nothing, and the report reads the same file
    again = run_history("--quick", "--folder", str(tmp_path))
    assert " seed " not in again
    report = run_history("--quick", "--folder", str(tmp_path), "--report-only")
    assert [line for line in report.splitlines() if line.startswith("nqm-b8 ")] == table


def test_the_moonshot_history_clause_is_read_from_the_recorded_runs(tmp_path: Path) -> None:
    # No runs recorded: the clause is pending, not "not met".
    ok, text = history.moonshot_check("dev", tmp_path / "none.jsonl.gz")
    assert ok is None and "history" in text
    # The committed runs: each split's measured workloads are counted by name.
    for split, names in (("dev", history.DEV), ("test", history.TEST)):
        ok, text = history.moonshot_check(split)
        assert ok is not None
        measured = int(text.rsplit(" of ", 1)[1].split()[0])
        assert measured == len(names)


def test_the_report_reads_todays_code_though_an_older_one_finished_later() -> None:
    from benchmarks.quality import harness

    today = harness.code_hashes()["stagelr"]
    store = {
        "a": {"code": today, "finished_at": "2026-01-01T00:00:00Z"},
        "b": {"code": "older", "finished_at": "2026-02-01T00:00:00Z"},  # a comparison run
    }
    assert history.latest_code(store) == "older"
    assert history.shown_code(store) == today
    del store["a"]
    assert history.shown_code(store) == "older"  # nothing of today's: the latest recorded


def test_no_history_run_reads_a_held_out_split_before_its_default_is_frozen(
    tmp_path: Path,
) -> None:
    assert history.held_out_unjudged(["digits", "convlm", "cnn-ft"], tmp_path) == [
        "convlm",
        "cnn-ft",
    ]
    harness.record_frozen(tmp_path, "abc1234", "test3")
    assert history.held_out_unjudged(["digits", "convlm", "cnn-ft", "lstm"], tmp_path) == ["lstm"]
