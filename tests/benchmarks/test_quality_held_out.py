"""The quality benchmark's fresher held-out splits (test2 .. test5): their variants build
and train, no stagelr method is planned there until the commit at which ``default`` is
frozen for that split is recorded, and the report shows ``default`` as not run there
meanwhile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from benchmarks.quality import harness, methods, report, rivals  # noqa: E402
from benchmarks.quality.harness import Cache, Task  # noqa: E402
from benchmarks.quality.workloads import HELD_OUT, SPLITS, VARIANTS  # noqa: E402

TEST2 = [name for name, v in VARIANTS.items() if v.split == "test2"]
TEST3 = [name for name, v in VARIANTS.items() if v.split == "test3"]
TEST4 = [name for name, v in VARIANTS.items() if v.split == "test4"]
TEST5 = [name for name, v in VARIANTS.items() if v.split == "test5"]
#: Per fresh split: its optimizer families and workloads at least, and its variant that
#: is the large-batch or long-horizon one, with the variant it scales (batch or T).
COVERAGE = {
    "test2": (
        {"adam", "sgd"},
        {"lstm", "autoencoder", "charmlp-ft"},
        ("autoencoder-5000", "autoencoder", "steps", 5),
    ),
    "test3": (
        {"adam", "adamw", "sgd"},
        {"convlm", "convlm-ft", "imagefit", "cnn-ft"},
        ("imagefit-b2048", "imagefit", "batch", 16),
    ),
    "test4": (
        {"adam", "sgd"},
        {"lorenz", "swissroll", "patchae-ft"},
        ("swissroll-b1024", "swissroll", "batch", 16),
    ),
    "test5": (
        {"adam", "sgd"},
        {"digitvit", "hastie", "lorenz-ft", "roll-ft"},
        ("hastie-b1024", "hastie", "batch", 32),
    ),
}
#: The fine-tunes: each starts from its pretrained model, so its first reading sits far
#: below a fresh model's (the byte LMs: a uniform guess over 256 bytes; the digits conv
#: net, whose new head is zero: exactly a uniform guess over its 10 classes; the patch
#: autoencoder: a fresh one's output is near zero, a pixel MSE near 0.2 on the photo).
FINE_TUNES = {
    "charmlp-ft": 0.6 * math.log(256),
    "convlm-ft": 0.6 * math.log(256),
    "patchae-ft": 0.03,
    # the Lorenz and roll fine-tunes: a fresh model's MSE of standardized targets is
    # about 1; the pretrained one starts well below it
    "lorenz-ft": 0.6,
    "roll-ft": 0.3,
}


@pytest.mark.parametrize("split", sorted(COVERAGE))
def test_a_fresh_split_covers_the_protocols_families(split: str) -> None:
    families, workloads, (scaled, base, what, factor) = COVERAGE[split]
    names = [name for name, v in VARIANTS.items() if v.split == split]
    assert split in SPLITS and split in HELD_OUT
    assert len(names) >= 4
    variants = [VARIANTS[n] for n in names]
    assert {v.family for v in variants} >= families
    assert {v.workload for v in variants} >= workloads
    # Fresh workloads: none shares a workload with an older split.
    older = {v.workload for v in VARIANTS.values() if SPLITS.index(v.split) < SPLITS.index(split)}
    assert not older & {v.workload for v in variants}
    # A large-batch or long-horizon variant.
    if what == "steps":
        assert VARIANTS[scaled].steps == factor * VARIANTS[base].steps
    else:
        assert VARIANTS[scaled].param(what) == factor * VARIANTS[base].param(what)
    for v in variants:
        assert len(v.grid) == 8
        assert all(b == pytest.approx(2 * a) for a, b in zip(v.grid, v.grid[1:], strict=False))


def test_every_workload_has_its_seed_counts() -> None:
    from benchmarks.quality.workloads import WORKLOADS

    assert {v.workload for v in VARIANTS.values()} == set(WORKLOADS)
    for workload in WORKLOADS:
        assert harness.GRID_SEEDS[workload] in (2, 3)  # BENCHMARK.md: 3 a point, 2 if slow
        assert harness.METHOD_SEEDS[workload] >= 3


@pytest.mark.parametrize("name", TEST2 + TEST3 + TEST4 + TEST5)
def test_a_fresh_variant_trains_a_smoke_run_deterministically(name: str) -> None:
    variant = VARIANTS[name].smoke(24)
    peak = variant.grid[2]  # the cooler half: a smoke run warms up over one step
    a = methods.run_grid_point(variant, 1, "wsd", peak)
    b = methods.run_grid_point(variant, 1, "wsd", peak)
    assert a.charged_steps == 24 and math.isfinite(a.final_loss)
    assert a.curve == b.curve  # the seed fixes init and data order
    if VARIANTS[name].workload in FINE_TUNES:
        assert a.curve[0][2] < FINE_TUNES[VARIANTS[name].workload]
    elif VARIANTS[name].workload == "cnn-ft":
        assert a.curve[0][2] == pytest.approx(math.log(10))
        assert a.final_loss < a.curve[0][2]
    else:
        assert a.final_loss < a.curve[0][2]  # it learns
    untuned = methods.run_method(variant, 2, "untuned", {})
    assert math.isfinite(untuned.final_loss)


def test_schedule_free_runs_on_a_test2_variant() -> None:
    variant = VARIANTS["autoencoder"].smoke(16)
    assert rivals.applies("dog", variant) and not rivals.applies("prodigy", variant)
    assert rivals.applies("prodigy", VARIANTS["lstm"])
    run = rivals.run_rival(variant, 0, "schedulefree", {})
    assert run.charged_steps == 3 * 16 and math.isfinite(run.final_loss)


def _run(final: float, steps: int) -> dict[str, Any]:
    return {
        "final_loss": final,
        "charged_steps": steps,
        "trajectory_steps": steps,
        "curve": [(0, 0, 2.0), (steps, steps, final)],
        "lr_path": [],
        "extra": {},
    }


def test_no_stagelr_run_is_planned_on_a_split_without_its_frozen_commit(tmp_path: Path) -> None:
    variant = VARIANTS["lstm"].smoke(40)
    cache = Cache(tmp_path).load()
    stagelr = [m for m in harness.ALL_METHODS if m.startswith("stagelr-")]
    assert "stagelr-autolrs" in stagelr and "stagelr-default" in stagelr

    def planned() -> set[str]:
        return {t.method for t in harness.plan(variant, cache, list(harness.ALL_METHODS), True,
                                               None)}  # fmt: skip

    assert not planned() & set(stagelr)
    assert {"grid", "untuned", "range_test", "schedulefree", "prodigy", "dadapt"} <= planned()
    # The test split's record does not open test2.
    harness.record_frozen(tmp_path, "abc1234")
    assert (tmp_path / harness.FROZEN_FILE).exists()
    assert not planned() & set(stagelr)
    assert not any(harness.method_applies(m, variant, tmp_path) for m in stagelr)
    assert harness.method_applies("stagelr-default", VARIANTS["cnn"], tmp_path)
    # Nor are the budgeted runs of default planned once the grid is complete.
    for kind, peak in harness.grid_points(variant, True):
        config = (("peak", peak), ("schedule", kind))
        cache.add(Task(variant, "grid", 0, config), _run(0.5 + peak, variant.steps))
    names = list(harness.ALL_METHODS)
    assert all(not m.startswith("stagelr-") for m, _ in harness.planned_methods(
        variant, cache, names, True, None))  # fmt: skip
    # Its own record does.
    harness.record_frozen(tmp_path, "def5678", "test2")
    assert harness.frozen_default(tmp_path, "test2")["commit"] == "def5678"
    assert (tmp_path / "default-frozen-test2.json").exists()
    assert {"stagelr-default", "stagelr-autolrs"} <= planned()
    assert ("stagelr-default", ()) in harness.planned_methods(variant, cache, names, True, None)
    # Naming default at T alone asks for no budgeted runs of it.
    at_t = ["grid", "stagelr-default", "stagelr-autolrs"]
    assert [m for m, _ in harness.planned_methods(variant, cache, at_t, True, None)] == ["grid"]
    with pytest.raises(ValueError, match="held-out"):
        harness.frozen_default(tmp_path, "dev")


def test_the_report_shows_default_not_run_on_test2(tmp_path: Path) -> None:
    variant = VARIANTS["lstm"].smoke(40)
    cache = Cache(tmp_path).load()
    points = harness.grid_points(variant, True)
    for kind, peak in points:
        config = (("peak", peak), ("schedule", kind))
        final = 0.4 if (kind, peak) == points[0] else 0.9
        cache.add(Task(variant, "grid", 0, config), _run(final, variant.steps))
    cache.add(Task(variant, "untuned", 0), _run(1.0, variant.steps))
    cache.add(Task(variant, "prodigy", 0), _run(0.6, variant.steps))
    harness.record_frozen(tmp_path, "abc1234")  # the test split's, not test2's
    summary = report.summarize(variant, cache, True, None)
    assert summary["split"] == "test2" and summary["default_run"] is False
    assert not any(m.startswith("stagelr-") for m in summary["methods"])
    verdicts = report.tier_verdicts([summary])
    assert set(verdicts) == {"test2"}
    assert {v["status"] for v in verdicts["test2"].values()} == {report.NOT_FROZEN}
    frozen = harness.frozen_defaults(tmp_path)
    assert frozen["test"] is not None and frozen["test2"] is None
    text = "\n".join(report.render_summary([summary], verdicts, img_prefix="", frozen=frozen))
    assert "**Test2 split.**" in text
    assert "default not yet run on the test2 split" in text
    assert f"| lstm | 0.4000 | {report.NOT_FROZEN} | Prodigy + cosine 0.6000 |" in text


def test_a_split_frozen_at_another_default_says_its_rows_are_dev_results(tmp_path: Path) -> None:
    variant = VARIANTS["lstm"].smoke(40)
    cache = Cache(tmp_path).load()
    for kind, peak in harness.grid_points(variant, True):
        cache.add(Task(variant, "grid", 0, (("peak", peak), ("schedule", kind))),
                  _run(0.5, variant.steps))  # fmt: skip
    record = harness.record_frozen(tmp_path, "abc1234", "test2")
    today = harness.code_hashes()["stagelr"]
    assert record["stagelr_code"] == today
    summary = report.summarize(variant, cache, True, None)
    verdicts = report.tier_verdicts([summary])
    frozen = harness.frozen_defaults(tmp_path)

    def text(code: str) -> str:
        return "\n".join(report.render_summary(
            [summary], verdicts, img_prefix="", frozen=frozen, stagelr_code=code))  # fmt: skip

    # Judged at today's code: no note.
    assert "frozen at commit `abc1234`" in text(today) and "changed after" not in text(today)
    # A later default: the split's rows are dev results for it.
    later = text("f" * 16)
    assert "`default` changed after these results were read" in later
    assert f"stagelr {today[:12]} then, ffffffffffff now" in later
    # unless recheck reproduced the judged code's runs with today's (an alias)
    same = "\n".join(report.render_summary([summary], verdicts, img_prefix="", frozen=frozen,
                      stagelr_code="f" * 16, equivalent=frozenset({today})))  # fmt: skip
    assert "changed after" not in same


def test_the_fine_tunes_start_from_their_pretrained_models() -> None:
    import torch
    from benchmarks.quality import workloads

    cnn = workloads.make_job(VARIANTS["cnn-ft"], 3)
    pretrained = workloads.pretrained_digit_cnn()
    ours = cnn.model.state_dict()  # type: ignore[attr-defined]
    head = f"{len(cnn.model) - 1}."  # type: ignore[attr-defined]
    body = [k for k in pretrained if not k.startswith(head)]
    assert body and all(torch.equal(ours[k], pretrained[k]) for k in body)
    assert all(not ours[k].any() for k in ours if k.startswith(head))  # a new, zero head
    # The pretrained net knows digits 0-4; the fine-tune's data holds only 5-9.
    assert set(cnn.y_train.tolist()) == {5, 6, 7, 8, 9}  # type: ignore[attr-defined]
    conv = workloads.make_job(VARIANTS["convlm-ft"].smoke(8), 3)
    weights = workloads.pretrained_conv_lm()
    assert all(torch.equal(v, weights[k]) for k, v in conv.model.state_dict().items())  # type: ignore[attr-defined]
    assert conv.val_loss() < workloads.make_job(VARIANTS["convlm"].smoke(8), 3).val_loss()
    patch = workloads.make_job(VARIANTS["patchae-ft"].smoke(8), 3)
    weights = workloads.pretrained_patch_autoencoder()
    assert all(torch.equal(v, weights[k]) for k, v in patch.model.state_dict().items())  # type: ignore[attr-defined]
    # far below the patches' own energy (the MSE of predicting zeros, about a fresh
    # autoencoder's start)
    energy = float((patch.x_val**2).mean())  # type: ignore[attr-defined]
    assert patch.val_loss() < 0.25 * energy
    # The Lorenz GRU knows the classic system and forecasts the drifted one better than a
    # fresh GRU; the roll's MLP knows the swiss roll and starts closer on the holed one.
    for name, weights_of, scratch in (
        ("lorenz-ft", workloads.pretrained_lorenz_gru, "lorenz"),
        ("roll-ft", workloads.pretrained_roll_mlp, "swissroll"),
    ):
        job = workloads.make_job(VARIANTS[name].smoke(8), 3)
        weights = weights_of()
        assert all(torch.equal(v, weights[k]) for k, v in job.model.state_dict().items())  # type: ignore[attr-defined]
        fresh = workloads.make_job(VARIANTS[scratch].smoke(8), 3)
        fresh.x_val, fresh.y_val = job.x_val, job.y_val  # type: ignore[attr-defined]
        assert job.val_loss() < fresh.val_loss(), name
