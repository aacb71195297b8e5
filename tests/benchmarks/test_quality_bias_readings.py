"""The offline reading of `default`'s searches against the grid's best peak
(benchmarks/quality/bias_readings.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks.quality import bias_readings


def window(seq: int, lr: float, points: list[float], end: float, sd: float) -> dict[str, Any]:
    return {
        "kind": "explore",
        "stage": 0,
        "seq": seq,
        "lr": lr,
        "status": "completed",
        "observations": [[i + 1, "val_loss", v] for i, v in enumerate(points)],
        "forecast": {"prediction": end, "std": sd},
    }


def test_a_search_is_read_against_the_best_peak() -> None:
    study = {
        "config": {"lr_max": 1.0, "pretrained": False},
        "stages": [{"chosen_lr": 0.2}],
        "segments": [
            window(0, 0.1, [2.0, 1.5], 1.5, 0.01),
            window(1, 0.4, [1.9, 2.1], 2.1, 0.02),  # ended above its start: unstable
            window(2, 0.2, [2.0, 1.0], 1.0, 0.05),
            window(3, 0.2, [0.9, 0.8], 0.8, 0.04),  # the check window
        ],
    }
    got = bias_readings.readings(study, best=0.1)
    assert got is not None
    assert got["bias"] == pytest.approx(math.log(0.5))  # chosen twice the best peak
    assert got["progress"] == pytest.approx(0.5)
    assert got["from_start"] == pytest.approx((0.9 - 1.0) / 0.9)  # lowest first reading
    assert got["noise"] == pytest.approx(0.05)
    assert got["cooler"] == pytest.approx(0.5 / math.log(2))
    assert got["hotter"] == pytest.approx(1.1 / math.log(2))
    assert got["check"] == pytest.approx(-0.2)
    assert got["edge"] == pytest.approx(0.0)  # half the unstable 0.4 is the choice
    assert got["in_range"] == pytest.approx(math.log(5.0))
    study["stages"] = [{"chosen_lr": 0.3}]  # no window at the choice: nothing to read
    assert bias_readings.readings(study, best=0.1) is None


def test_rank_correlation() -> None:
    assert bias_readings.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bias_readings.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    nan = float("nan")
    assert bias_readings.spearman([1, 2, nan, 3, 4], [1, 2, 5, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(bias_readings.spearman([1, 2], [2, 1]))


@pytest.mark.slow
def test_the_committed_cache_is_read_per_variant_and_split() -> None:
    data = bias_readings.collect()
    assert {"digits", "nqm-b8", "hastie"} <= set(data)
    assert all(len(rows) <= 10 for rows in data.values())  # today's code's seeds only
    text = bias_readings.report(data)
    assert "dev (6 variants)" in text and "held-out" in text and "in_range:" in text
