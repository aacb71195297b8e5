"""The quality report's tier verdicts: which run each check reads (default at a budget of
T for the equal-compute checks, at 3T for the steps-to-target ones), on made-up
summaries so every branch is exercised without training."""

from __future__ import annotations

from typing import Any

from benchmarks.quality.report import missed_seed_notes, per_run_ratio_note, tier_verdicts

SEEDS = [0, 1, 2]


def row(at_budget: float, *, hits: int = 0, ratio: float = 0.0, stt: float = float("inf")):
    return {
        "seeds": SEEDS,
        "loss_at_budget": dict.fromkeys(SEEDS, at_budget),
        "reached_target": hits,
        "tuning_inclusive_ratio": ratio,
        "speedup": 1000 / stt if stt != float("inf") else 0.0,
        "steps_to_target": stt,
    }


def summary(name: str, methods: dict[str, Any]) -> dict[str, Any]:
    return {
        "variant": name,
        "workload": "digits",
        "steps": 1000,
        "target": 0.5,
        "missing": 0,
        "methods": methods,
    }


def rivals(level: float = 1.0) -> dict[str, Any]:
    return {
        name: row(level) for name in ("untuned", "range_test", "schedulefree", "stagelr-autolrs")
    }


def checks(verdicts: dict[str, Any], tier: str) -> dict[str, bool | None]:
    return {c["check"]: c["ok"] for c in verdicts[tier]["checks"]}


def test_credible_reads_equal_compute_at_t_and_the_target_at_3t() -> None:
    methods = {
        **rivals(),
        "stagelr-default": row(0.8),  # beats every rival at T, never reaches the target
        "stagelr-default-3t": row(2.0, hits=3, ratio=3.2, stt=2500),
    }
    verdicts = tier_verdicts([summary("a", methods), summary("b", methods)])
    assert verdicts["Credible"]["status"] == "met"
    assert all(checks(verdicts, "Credible").values())
    assert verdicts["Strong"]["status"] == "not met"  # speedup 0.4
    assert verdicts["Moonshot"]["status"] == "not met"  # the T run never reaches the target


def test_one_seed_short_of_the_target_at_3t_fails_credible() -> None:
    methods = {
        **rivals(),
        "stagelr-default": row(0.8, hits=3, ratio=8.0, stt=1000),
        "stagelr-default-3t": row(2.0, hits=2, ratio=3.2, stt=2500),
    }
    found = checks(tier_verdicts([summary("a", methods)]), "Credible")
    assert found["default reaches the target within 3T on every seed"] is False
    assert found["default beats every Tier-B rival at equal charged compute on most variants"]
    assert found["default beats autolrs at equal charged steps everywhere"]


def test_losing_at_equal_compute_on_half_the_variants_is_not_most() -> None:
    ahead = {**rivals(), "stagelr-default": row(0.8), "stagelr-default-3t": row(2.0, hits=3)}
    behind = {**rivals(), "stagelr-default": row(1.2), "stagelr-default-3t": row(2.0, hits=3)}
    found = checks(tier_verdicts([summary("a", ahead), summary("b", behind)]), "Credible")
    key = "default beats every Tier-B rival at equal charged compute on most variants"
    assert found[key] is False
    assert found["default beats autolrs at equal charged steps everywhere"] is False


def test_without_the_3t_run_the_target_checks_fail() -> None:
    methods = {**rivals(), "stagelr-default": row(0.8, hits=3, ratio=8.0, stt=1000)}
    found = checks(tier_verdicts([summary("a", methods)]), "Credible")
    assert found["default reaches the target within 3T on every seed"] is False
    assert found["default's tuning-inclusive compute ratio >= 2.5 everywhere"] is False


def test_an_incomplete_variant_leaves_the_tiers_pending() -> None:
    methods = {
        **rivals(),
        "stagelr-default": row(0.8),
        "stagelr-default-3t": row(2.0, hits=3, ratio=3.2, stt=2500),
    }
    unfinished = {**summary("b", methods), "missing": 4}
    verdicts = tier_verdicts([summary("a", methods), unfinished])
    assert verdicts["Credible"]["status"] == "pending"
    assert verdicts["Credible"]["pending_variants"] == ["b"]


def test_each_missed_seed_says_whether_the_grid_reaches_the_target_on_it() -> None:
    three_t = {**row(2.0, hits=0), "missed_seeds": [3, 7, 8]}
    variant = {
        **summary("a", {"stagelr-default-3t": three_t}),
        # seed 3: no schedule gets there; seed 7: one does; seed 8: grid not trained
        "grid_reach": {3: 0.51, 7: 0.49},
    }
    clean = {**summary("b", {"stagelr-default-3t": {**row(2.0, hits=3), "missed_seeds": []}})}
    notes = missed_seed_notes([variant, clean])
    assert notes == [
        "a seed 3 (no grid schedule reaches the target on it within T: lowest 0.5100)",
        "a seed 7 (the grid's lowest point on it within T is 0.4900: reachable)",
        "a seed 8 (the grid was not trained on it)",
    ]
    assert missed_seed_notes([clean]) == []


def test_the_per_run_ratio_is_printed_beside_the_median_curves_and_not_judged() -> None:
    # runs that each dip below the target at different steps: the median over runs of
    # their own steps-to-target is finite while the median curve never gets there
    three_t = {
        **row(2.0, hits=2, ratio=0.0),
        "missed_seeds": [2],
        "steps_to_target_per_seed": 500.0,
        "tuning_inclusive_ratio_per_seed": 16.0,
    }
    methods = {**rivals(), "stagelr-default": row(0.8), "stagelr-default-3t": three_t}
    note = per_run_ratio_note([summary("a", methods), summary("b", {})])
    assert note == (
        "- default's tuning-inclusive compute ratio read run by run (the median over seeds "
        "of each run's own steps-to-target; the verdict reads the median curve): "
        "a 16.0x (median curve 0.0x)."
    )
    found = checks(tier_verdicts([summary("a", methods)]), "Credible")
    assert found["default's tuning-inclusive compute ratio >= 2.5 everywhere"] is False
    assert per_run_ratio_note([summary("b", {})]) is None
