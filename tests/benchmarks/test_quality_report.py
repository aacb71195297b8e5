"""The quality benchmark's version-2 readings, on made-up results (no training).

Steps-to-target from budgeted runs per seed, the anytime reading, the gap closed, the
chosen LR against the grid's best peak, the tier verdicts per split (and ``default``
absent from the test split until its frozen commit is recorded), the lazily planned
budgets, and the compressed cache with its code aliases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from benchmarks.quality import harness, report  # noqa: E402
from benchmarks.quality.harness import Cache, Task  # noqa: E402
from benchmarks.quality.workloads import VARIANTS  # noqa: E402


def test_budgeted_steps_is_the_smallest_budget_whose_run_ends_at_the_target() -> None:
    t = 1000
    assert report.budgeted_steps({1.0: 0.39}, 0.4, t) == 1000  # T suffices; none other read
    assert report.budgeted_steps({1.0: 0.5, 1.5: 0.45, 2.0: 0.40}, 0.4, t) == 2000  # at, not below
    assert report.budgeted_steps({1.0: 0.5, 1.5: 0.45}, 0.4, t) is None  # 2T not run yet
    assert report.budgeted_steps({1.0: 0.5, 1.5: 0.5, 2.0: 0.5, 3.0: 0.41}, 0.4, t) == math.inf
    # A run that ENDS above the target does not count, however low it went on the way.
    assert report.budgeted_steps({1.0: 0.41, 1.5: 0.3}, 0.4, t) == 1500


def test_the_anytime_reading_needs_the_curve_to_stay_at_the_target() -> None:
    curve = [(0, 0, 2.0), (10, 10, 0.35), (20, 20, 0.45), (30, 30, 0.40), (40, 40, 0.38)]
    # It touches 0.4 at 10 but climbs away again: it stays at or below only from 30.
    assert report.stays_below_from(curve, 0.4) == 30
    assert report.stays_below_from(curve, 0.3) == math.inf  # ends above
    assert report.stays_below_from(curve[:2], 0.4) == 10
    assert report.median_steps([10.0, 30.0, math.inf]) == 30.0
    assert report.median_steps([10.0, math.inf, math.inf]) == math.inf  # most seeds miss


def test_gap_closed_is_the_median_over_seeds_of_the_closed_fraction() -> None:
    untuned = {0: 1.0, 1: 1.0, 2: 0.6}
    method = {0: 0.5, 1: 0.8, 2: 0.4}
    # target 0.4: seed 0 closes 0.5/0.6, seed 1 0.2/0.6, seed 2 0.2/0.2
    assert report.gap_closed(untuned, method, 0.4) == pytest.approx(0.5 / 0.6)
    assert report.gap_closed({0: 1.0}, {0: 0.3}, 0.4) == pytest.approx(0.7 / 0.6)  # beyond it
    assert math.isnan(report.gap_closed({0: 0.3}, {0: 0.3}, 0.4))  # untuned already at it
    assert report.gap_closed({0: 1.0}, {0: math.nan}, 0.4) == -math.inf  # diverged


def _run(final: float, steps: int, *, curve: list[tuple[int, int, float]] | None = None,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    curve = curve or [(0, 0, 2.0), (steps, steps, final)]
    return {
        "final_loss": final,
        "charged_steps": curve[-1][1],
        "trajectory_steps": curve[-1][0],
        "curve": curve,
        "lr_path": [],
        "extra": extra or {},
    }


def _grid_cache(tmp_path: Path, name: str, best: float = 0.40) -> tuple[Cache, Any, tuple]:
    """A quick-mode cache whose grid's best point (linear at the larger peak) sets the
    target ``best``; every other point ends at 0.9."""
    variant = harness.variants_for(True, [name])[0]
    cache = Cache(tmp_path).load()
    points = harness.grid_points(variant, True)
    top = max(p for _, p in points)
    best_config = (("peak", top), ("schedule", "linear"))
    for kind, peak in points:
        config = (("peak", peak), ("schedule", kind))
        final = best if config == best_config else 0.9
        cache.add(Task(variant, "grid", 0, config), _run(final, variant.steps))
    return cache, variant, best_config


def test_summary_reads_budgets_anytime_runs_gap_and_lr_ratio(tmp_path: Path) -> None:
    cache, variant, best = _grid_cache(tmp_path, "cnn")
    steps = variant.steps
    assert variant.split == "test"
    cache.add(Task(variant, "untuned", 0), _run(1.0, steps))
    cache.add(Task(variant, "range_test", 0), _run(0.7, steps, extra={"chosen_peak": 0.002}))
    # Prodigy misses at T and 1.5T, ends at the target planned for 2T.
    for budget, final in ((1.0, 0.55), (1.5, 0.45), (2.0, 0.40)):
        config = () if budget == 1.0 else (("budget", budget),)
        cache.add(Task(variant, "prodigy", 0, config), _run(final, round(budget * steps)))
    # Schedule-free (anytime, 3T): touches the target early, climbs, settles at 2T.
    e = steps // 2
    sf_curve = [(0, 0, 2.0), (e, e, 0.39), (steps, steps, 0.6), (4 * e, 4 * e, 0.4),
                (6 * e, 6 * e, 0.38)]  # fmt: skip
    cache.add(Task(variant, "schedulefree", 0), _run(0.38, 3 * steps, curve=sf_curve))
    # The target config's T run on the method seed is the grid run itself (seed 0).
    summary = report.summarize(variant, cache, True, None)
    assert summary["target"] == pytest.approx(0.40)
    assert summary["target_config"] == dict(best)
    rows = summary["methods"]
    assert rows["target"]["steps_to_target"] == steps  # ends at the target at T
    assert rows["prodigy"]["steps_to_target"] == 2 * steps
    assert rows["prodigy"]["steps_to_target_by_seed"] == {0: 2 * steps}
    assert rows["prodigy"]["final_median"] == pytest.approx(0.55)  # at T: the T run's
    assert rows["schedulefree"]["steps_to_target"] == 4 * e
    assert rows["schedulefree"]["final_median"] == pytest.approx(0.6)  # its evaluation at T
    assert rows["schedulefree"]["charged_median"] == steps  # read at T, not 3T
    assert rows["prodigy"]["gap_closed"] == pytest.approx(0.45 / 0.6)
    assert rows["range_test"]["chosen_lr_ratio"] == pytest.approx(0.002 / dict(best)["peak"])
    assert summary["best_rival"] == "prodigy"  # 0.55 at T against 0.6, 0.7 and 1.0
    # default is not run on the test split until its frozen commit is recorded.
    assert summary["default_run"] is False and "stagelr-default" not in rows
    verdicts = report.tier_verdicts([summary])
    assert set(verdicts) == {"test"}
    assert {v["status"] for v in verdicts["test"].values()} == {report.NOT_FROZEN}
    info = report.machine()
    lines = report.render([summary], verdicts, command="c", info=info, img_prefix="", cache=cache)
    lines += report.render_summary([summary], verdicts, img_prefix="")
    text = "\n".join(lines)
    assert "default not yet run on the test split" in text
    assert f"| cnn | 0.4000 | {report.NOT_FROZEN} | Prodigy + cosine 0.5500 |" in text
    assert "[plot](quality-cnn.png)" in text


def test_budgets_are_planned_one_at_a_time_until_a_run_ends_at_the_target(tmp_path: Path) -> None:
    cache, variant, best = _grid_cache(tmp_path, "cnn", best=0.40)
    methods = ["grid", "prodigy"]
    # The target config's T run on seed 0 ended at the target: nothing more for it.
    assert harness.extension(variant, cache, methods, True, None) == [Task(variant, "prodigy", 0)]
    cache.add(Task(variant, "prodigy", 0), _run(0.5, variant.steps))
    (nxt,) = harness.extension(variant, cache, methods, True, None)
    assert nxt == Task(variant, "prodigy", 0, (("budget", 1.5),)) and nxt.budget == 1.5
    cache.add(nxt, _run(0.39, round(1.5 * variant.steps)))
    assert harness.extension(variant, cache, methods, True, None) == []
    # default joins the test split's plan only once its frozen commit is recorded.
    assert not harness.method_applies("stagelr-default", variant, tmp_path)
    first = harness.plan(variant, cache, ["stagelr-default", "stagelr-default-3t"], True, None)
    assert first == []
    harness.record_frozen(tmp_path, "abc1234")
    first = harness.plan(variant, cache, ["stagelr-default", "stagelr-default-3t"], True, None)
    assert first == [Task(variant, "stagelr-default", 0)]  # the budgets come later, lazily
    # The budgets of stagelr are default's own rows; autolrs runs once.
    assert harness.budget_task(variant, "stagelr-default", 2, (), 1.5).method == (
        "stagelr-default-1.5t"
    )
    assert harness.budget_task(variant, "stagelr-autolrs", 2, (), 1.0).method == "stagelr-autolrs"
    # DoG is an SGD-family rival, Prodigy an Adam-family one.
    assert harness.method_applies("dog", VARIANTS["regression"], tmp_path)
    assert not harness.method_applies("dog", variant, tmp_path)
    assert not harness.method_applies("prodigy", VARIANTS["digits"], tmp_path)


def test_budgeted_runs_alone_are_planned_when_every_run_at_t_is_cached(tmp_path: Path) -> None:
    cache, variant, _ = _grid_cache(tmp_path, "cnn", best=0.40)
    harness.record_frozen(tmp_path, "abc1234")
    wanted = ["grid", "stagelr-default-1.5t"]
    cache.add(Task(variant, "stagelr-default", 0), _run(0.5, variant.steps))
    assert harness.plan(variant, cache, wanted, True, None) == []
    batches = harness.phases(variant, cache, [], wanted, True, None)
    phase, tasks = next(batches)
    assert phase == "budgeted runs"
    assert tasks == [Task(variant, "stagelr-default-1.5t", 0)]
    cache.add(tasks[0], _run(0.45, round(1.5 * variant.steps)))  # still above: 2T next
    assert next(batches)[1] == [Task(variant, "stagelr-default-2t", 0)]
    cache.add(Task(variant, "stagelr-default-2t", 0), _run(0.39, 2 * variant.steps))
    assert list(batches) == []


def _summary(name: str, split: str, default: float | None, rival: float, target: float = 0.4,
             steps_to: float = 1000.0, autolrs: float = 0.9) -> dict[str, Any]:  # fmt: skip
    def row(value: float, stt: float = math.nan, verdict: str = "worse") -> dict[str, Any]:
        return {"final_median": value, "finals": {s: value + 0.001 * s for s in range(5)},
                "steps_to_target": stt, "vs_target": verdict}  # fmt: skip

    methods = {"prodigy": row(rival), "stagelr-autolrs": row(autolrs)}
    if default is not None:
        verdict = "matches" if default <= target + 0.01 else "worse"
        methods["stagelr-default"] = row(default, steps_to, verdict)
    return {
        "variant": name, "split": split, "workload": name, "steps": 1000, "target": target,
        "runs_missing": 0, "default_run": default is not None, "methods": methods,
        "best_rival": "prodigy", "target_seed_sd": 0.02,
    }  # fmt: skip


def test_tier_verdicts_are_read_per_split() -> None:
    dev = [_summary(f"d{i}", "dev", 0.41, 0.5) for i in range(5)]
    # The test split: default loses to the rival on two of five workloads (60% < 80%).
    test = [_summary(f"t{i}", "test", 0.41, 0.5) for i in range(3)]
    test += [_summary(f"t{i}", "test", 0.6, 0.5, steps_to=3000.0) for i in range(3, 5)]
    verdicts = report.tier_verdicts(dev + test)
    assert verdicts["dev"]["Credible"]["status"] == "met"
    assert verdicts["dev"]["Strong"]["status"] == "met"
    assert verdicts["dev"]["Moonshot"]["status"] == "not met"  # warm starts not measured
    assert verdicts["test"]["Credible"]["status"] == "not met"
    checks = {c["check"]: c["ok"] for c in verdicts["test"]["Credible"]["checks"]}
    assert checks["steps-to-target at most 2T (median) on every workload"] is False
    assert checks["never worse than the best rival by more than one seed-SD"] is False
    assert verdicts["test"]["Strong"]["status"] == "not met"  # 3 of 5 match
    # Four of five is 80%: Strong holds.
    test[3] = _summary("t3", "test", 0.41, 0.5)
    assert report.tier_verdicts(dev + test)["test"]["Strong"]["status"] == "met"
    # A pending workload that could still tip the count leaves the tier pending.
    pending = {**dev[0], "runs_missing": 3}
    dev_short = [pending] + [_summary(f"d{i}", "dev", 0.6, 0.5) for i in range(1, 2)] + dev[2:]
    assert report.tier_verdicts(dev_short)["dev"]["Strong"]["status"] == "pending"
    # default not run on any workload of a split: the split says so.
    unrun = [_summary(f"t{i}", "test", None, 0.5) for i in range(4)]
    assert report.tier_verdicts(unrun)["test"]["Credible"]["status"] == report.NOT_FROZEN


def test_the_cache_is_compressed_and_reads_aliased_code_as_todays(tmp_path: Path) -> None:
    variant = VARIANTS["nqm-b8"]
    old_hashes = {**harness.code_hashes(), "baseline": "0ld0ld0ld0ld0ld0"}
    old = Cache(tmp_path, hashes=old_hashes).load()
    task = Task(variant, "untuned", 3)
    old.add(task, _run(0.5, variant.steps))
    old.add(Task(variant, "range_test", 3), _run(0.6, variant.steps))
    old.compact([variant.name])
    path = tmp_path / "nqm-b8.jsonl.gz"
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert len(harness.read_records(path)) == 2
    today = Cache(tmp_path).load()
    assert today.get(task) is None and today.stale == 2  # another code's runs
    entry: dict[str, Any] = {
        "kind": "baseline", "old": "0ld0ld0ld0ld0ld0", "new": today.hashes["baseline"],
        "variants": ["digits"],
    }  # fmt: skip
    (tmp_path / harness.ALIASES_FILE).write_text(json.dumps({"aliases": [entry]}))
    assert Cache(tmp_path).load().get(task) is None  # vouched for another workload only
    entry["variants"] = ["digits", "nqm-b64"]  # nqm-b8 runs the NQM's code too
    (tmp_path / harness.ALIASES_FILE).write_text(json.dumps({"aliases": [entry]}))
    today = Cache(tmp_path).load()
    record = today.get(task)
    assert record is not None and record["run"]["final_loss"] == 0.5
    assert record["code"] == today.hashes["baseline"] and today.stale == 0
    # An alias of one kind never vouches for another kind's runs under the same hash.
    entry["kind"] = "rival"
    (tmp_path / harness.ALIASES_FILE).write_text(json.dumps({"aliases": [entry]}))
    assert Cache(tmp_path).load().get(task) is None


def test_an_alias_that_names_methods_vouches_for_their_runs_alone(tmp_path: Path) -> None:
    """A preset's defaults change: the other preset's runs are carried over (recheck
    --method), the changed one's are not, also through a chain of aliases."""
    variant = VARIANTS["nqm-b8"]
    today = harness.code_hashes()["stagelr"]
    older, old = "01d01d01d01d01d0", "0ld0ld0ld0ld0ld0"
    for code in (older, old):
        cache = Cache(tmp_path, hashes={**harness.code_hashes(), "stagelr": code}).load()
        cache.add(Task(variant, "stagelr-autolrs", int(code == old)), _run(0.7, variant.steps))
        cache.add(Task(variant, "stagelr-default", int(code == old)), _run(0.6, variant.steps))
    chain = {"kind": "stagelr", "old": older, "new": old, "variants": ["nqm-b64"]}
    scoped = {
        "kind": "stagelr", "old": old, "new": today, "variants": ["nqm-b8"],
        "methods": ["stagelr-autolrs"],
    }  # fmt: skip
    (tmp_path / harness.ALIASES_FILE).write_text(json.dumps({"aliases": [chain, scoped]}))
    aliases = harness.load_aliases(tmp_path, harness.code_hashes())
    assert harness.alias_of(aliases, "stagelr", old, "nqm", "stagelr-autolrs") == today
    assert harness.alias_of(aliases, "stagelr", old, "nqm", "stagelr-default") is None
    # the older hash reaches today's through the scoped link: for autolrs only
    assert harness.alias_of(aliases, "stagelr", older, "nqm", "stagelr-autolrs") == today
    assert harness.alias_of(aliases, "stagelr", older, "nqm", "stagelr-default") is None
    loaded = Cache(tmp_path).load()
    assert {(r["method"], r["seed"]) for r in loaded.records.values()} == {
        ("stagelr-autolrs", 0),
        ("stagelr-autolrs", 1),
    }
    assert loaded.stale == 2


@pytest.mark.slow
def test_rivals_plan_their_budget_and_the_anytime_ones_run_to_3t() -> None:
    pytest.importorskip("prodigyopt")
    pytest.importorskip("dog")
    from benchmarks.quality import rivals

    nqm = VARIANTS["nqm-b8"].smoke(40)
    dog = rivals.run_rival(nqm, 0, "dog", {})
    # anytime: one run to 3T, evaluated every T/8 as at T, on the averaged iterate
    assert dog.charged_steps == 120 and [c for _, c, _ in dog.curve][:3] == [0, 5, 10]
    assert len(dog.curve) == 1 + 24 and dog.final_loss < dog.curve[0][2]
    cnn = VARIANTS["cnn"].smoke(40)
    prodigy = rivals.run_rival(cnn, 0, "prodigy", {"budget": 1.5})
    assert prodigy.charged_steps == 60 and len(prodigy.curve) == 1 + 12
    with pytest.raises(ValueError, match="not a rival"):
        rivals.run_rival(cnn, 0, "dog", {})
