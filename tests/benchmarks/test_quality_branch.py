"""The quality benchmark's grid branches each WSD run from its constant twin: the records
must be exactly those of separate runs, or the saving would change the figures."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")

from benchmarks.quality import harness, methods  # noqa: E402
from benchmarks.quality.workloads import VARIANTS, Variant  # noqa: E402


def _same(a: methods.Run, b: methods.Run) -> None:
    assert a.charged_steps == b.charged_steps
    assert a.trajectory_steps == b.trajectory_steps
    assert a.lr_path == b.lr_path
    assert a.diverged == b.diverged
    assert len(a.curve) == len(b.curve)
    for (t1, c1, v1), (t2, c2, v2) in zip(a.curve, b.curve, strict=True):
        assert (t1, c1) == (t2, c2)
        assert (math.isnan(v1) and math.isnan(v2)) or v1 == v2  # bit for bit


@pytest.mark.parametrize(
    ("name", "steps", "peak"),
    [("nqm-b8", 160, 0.5), ("digits", 160, 0.1), ("charlm", 40, 4e-3)],
)
def test_branched_wsd_equals_a_separate_run(name: str, steps: int, peak: float) -> None:
    variant = VARIANTS[name].smoke(steps)
    constant, wsd = harness.run_constant_and_wsd(variant, 3, peak)
    _same(constant, methods.run_grid_point(variant, 3, "constant", peak))
    _same(wsd, methods.run_grid_point(variant, 3, "wsd", peak))
    # The branch really is one: the cooldown differs from the constant run's tail.
    assert wsd.lr_path != constant.lr_path
    assert wsd.curve[-1][2] != constant.curve[-1][2]
    assert wsd.extra == {"branched_from": "constant", "shared_steps": steps - steps // 5}


def test_a_diverging_trunk_diverges_its_branch_at_the_same_step() -> None:
    variant = VARIANTS["nqm-b8"].smoke(160)
    constant, wsd = harness.run_constant_and_wsd(variant, 0, 2.5)  # beyond 2 / h_max
    assert constant.diverged and wsd.diverged
    _same(wsd, methods.run_grid_point(variant, 0, "wsd", 2.5))


def _grid(variant: Variant, seed: int, schedule: str, peak: float) -> harness.Task:
    return harness.Task(variant, "grid", seed, (("peak", peak), ("schedule", schedule)))


def test_work_items_pair_only_missing_twins() -> None:
    v = VARIANTS["digits"]
    c1, w1 = _grid(v, 0, "constant", 0.1), _grid(v, 0, "wsd", 0.1)
    c2 = _grid(v, 0, "constant", 0.2)  # its WSD twin is already in the cache
    w3 = _grid(v, 1, "wsd", 0.1)  # its constant twin is already in the cache
    lin = _grid(v, 0, "linear", 0.1)
    other = harness.Task(v, "untuned", 0)
    items = harness._work_items([lin, c1, c2, w3, other, w1])
    assert items == [(lin,), (c1, w1), (c2,), (w3,), (other,)]
    # The grid's own order puts WSD before constant: the twin is still trained once.
    assert harness._work_items([lin, w1, c1]) == [(lin,), (c1, w1)]
    plan = harness.plan(v, harness.Cache(harness.ROOT / "no-such-cache"), ["grid"], True, None)
    items = harness._work_items(plan)
    assert sorted(id(t) for item in items for t in item) == sorted(id(t) for t in plan)
    assert sum(len(item) == 2 for item in items) == 2  # one per quick grid peak


def test_charlm_grid_completes_a_point_before_the_next_and_others_go_seed_by_seed() -> None:
    empty = harness.Cache(harness.ROOT / "no-such-cache")
    charlm = [t for t in harness.plan(VARIANTS["charlm-3000"], empty, ["grid"], False, None)]
    assert len(charlm) == 64  # 4 schedules x 8 peaks x 2 seeds
    configs = [t.config for t in charlm]
    # Each point's two seeds are adjacent, and the first points are the grid's centre.
    assert all(configs[i] == configs[i + 1] for i in range(0, len(configs), 2))
    assert [t.seed for t in charlm[:4]] == [0, 1, 0, 1]
    centre = dict(configs[0])["peak"]
    assert all(dict(c)["peak"] == centre for c in configs[:8])
    digits = harness.plan(VARIANTS["digits"], empty, ["grid"], False, None)
    assert [t.seed for t in digits[:32]] == [0] * 32  # seed 0 of every point first


def test_the_ablation_turns_off_one_switch_per_row_and_reads_paired_differences(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from benchmarks.quality import ablation

    from stagelr.models import StudyConfig
    from stagelr_service.tuner import resolve

    variant = harness.variants_for(False, ["nqm-b8"])[0]
    tasks = ablation.tasks_for(variant, [0, 1])
    assert len(tasks) == 2 * (1 + len(ablation.SWITCHES))
    for task in tasks:
        # every ablated config is a valid study config that differs from default
        config = StudyConfig(lr_min=0.01, lr_max=1.0, total_steps=1000, **dict(task.config))
        if task.config:
            base = StudyConfig(lr_min=0.01, lr_max=1.0, total_steps=1000)
            assert resolve(config) != resolve(base)

    cache = harness.Cache(tmp_path).load()
    # default 1.0 / 2.0; continue_best off is worse by 0.5 on both seeds; the rest equal
    for task in tasks:
        worse = dict(task.config) == {"continue_best": False}
        loss = (1.0 if task.seed == 0 else 2.0) + (0.5 if worse else 0.0)
        cache.add(task, {"final_loss": loss, "charged_steps": 1000})
    summary = ablation.summarize(variant, cache, [0, 1])
    rows = {row["switch"]: row for row in summary["rows"]}
    assert rows["continue_best"]["verdict"] == "default better"
    assert rows["continue_best"]["diff"][0] == pytest.approx(0.5)
    assert rows["final decay"]["verdict"] == "no clear effect"
    text = "\n".join(ablation.render([summary], "cmd", {"cpu": "x"}))
    assert "| continue_best | off: the stage restarts from its start | 2.0000 |" in text
