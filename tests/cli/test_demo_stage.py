"""How the demo prints a stage's search and the check of its choice (no server)."""

from __future__ import annotations

from stagelr.models import (
    CandidateView,
    ForecastView,
    LRShape,
    SegmentStatus,
    SegmentView,
    StageDetail,
)
from stagelr_service.demo import describe_stage


def window(index: int, lr: float, end: float, checks: int | None = None) -> CandidateView:
    forecast = ForecastView(prediction=end, std=0.01, status="ok", model="window_end", n_points=4)
    return CandidateView(
        segment_id=10 + index,
        index=index,
        lr=lr,
        status=SegmentStatus.completed,
        steps_done=4,
        forecast=forecast,
        checks=checks,
    )


def stage(chosen: float, check: CandidateView) -> StageDetail:
    search = [window(0, 0.01, 1.2), window(1, 0.3, 0.9)]
    return StageDetail(
        study_id=1, index=0, tau=40, tau_explore=4, start_step=0, chosen_lr=chosen,
        candidates=[*search, check],
    )  # fmt: skip


def training(lr: float, start: int) -> SegmentView:
    return SegmentView.model_construct(
        lr=lr, lr_end=None, lr_shape=LRShape.constant, steps=40 - start, start_step=start
    )


def test_a_check_that_held_is_printed_after_the_search_and_the_stage_goes_on() -> None:
    lines = describe_stage(
        stage(0.3, window(2, 0.3, 0.7, checks=1)), training(0.3, 8), "min_forecast", "window_end"
    )
    assert lines[0].startswith("  stage 0: searched 2 LRs for 4 steps each")
    assert sum("<- chosen" in line for line in lines) == 1  # the check is not a candidate
    assert "then checked lr=0.3 for 4 more steps from its window's end: forecast 0.7000" in (
        "\n".join(lines)
    )
    assert "      (it held its ground: the stage goes on from there)" in lines
    assert lines[-1] == "  stage 0: trained    32 steps at lr=0.3 (steps 8-40)"


def test_a_check_that_lost_ground_says_the_search_chose_again() -> None:
    lines = describe_stage(
        stage(0.01, window(2, 0.3, 1.5, checks=1)), training(0.01, 0), "min_forecast", "window_end"
    )
    assert "      (it lost ground: the search chose again below half its LR)" in lines
    chosen = [line for line in lines if "<- chosen" in line]
    assert len(chosen) == 1 and "lr=0.01" in chosen[0]
    assert lines[-1] == "  stage 0: trained    40 steps at lr=0.01 (steps 0-40)"
