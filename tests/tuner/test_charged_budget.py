"""``charged_steps``: a study told the job's whole compute fits its search, a range test
and its trajectory into it (the tuner's bisection over ``total_steps``), through the pure
tuner and through the real client against a live server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import stagelr
from stagelr.models import SegmentKind, StudyStatus
from stagelr_service import tuner
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, simulate
from stagelr_service.tuner.config import ResolvedConfig, resolve


def config_of(**fields: Any) -> ResolvedConfig:
    """A config as the server resolves a request of ``fields``."""
    return resolve(fields)


def charged(budget: int, **overrides: object) -> ResolvedConfig:
    base: dict[str, object] = {"lr_min": 1e-3, "lr_max": 1.0, "charged_steps": budget}
    return config_of(**{**base, **overrides})  # type: ignore[arg-type]


def fits(config: ResolvedConfig, steps: int) -> bool:
    candidate = ResolvedConfig.model_validate(
        {**config.model_dump(mode="json"), "total_steps": steps}
    )
    return tuner.planned_charge(candidate) <= (config.charged_steps or 0)


@pytest.mark.parametrize("budget", [300, 1000, 1500, 3000, 4500, 9000])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"k": 10, "explore_ratio": 0.1}, {"planner": "budget", "budget_stages": 2}],
    ids=["default", "reference-search", "budget-planner"],
)
def test_the_fitted_trajectory_is_the_longest_that_fits(budget, overrides) -> None:
    config = charged(budget, **overrides)
    fitted = tuner.fit_charged_budget(config)
    assert fitted.total_steps is not None and fitted.charged_steps == budget
    assert tuner.planned_charge(fitted) <= budget
    # the search is paid out of the budget: less trajectory than budget
    assert fitted.total_steps < budget
    # bisection's boundary: one more trajectory step no longer fits
    assert not fits(config, fitted.total_steps + 1)
    # everything else is the config as given
    assert fitted.model_copy(update={"total_steps": None}) == config


def test_the_default_search_leaves_most_of_a_budget_to_the_trajectory() -> None:
    default = tuner.fit_charged_budget(charged(1000))
    reference_search = tuner.fit_charged_budget(
        charged(1000, k=10, explore_ratio=0.1, continue_best=False)
    )
    restarted = tuner.fit_charged_budget(charged(1000, continue_best=False))
    unchecked = tuner.fit_charged_budget(charged(1000, finalists=0))
    # 6 windows of 18 steps, the chosen one continued by its check window, which the
    # stage continues in turn: 910 steps of trajectory, the check costing none of them;
    # without the continuation 892 (6 x 18 charged on top of the trajectory).
    assert default.total_steps == unchecked.total_steps == 910
    assert tuner.planned_charge(default) == 1000
    assert restarted.total_steps == 892
    assert reference_search.total_steps == 556


def test_a_fitted_study_charges_no_more_than_its_budget_and_ends_with_its_decay(
    optimizer,
) -> None:
    for budget in (700, 2500):
        config = tuner.fit_charged_budget(charged(budget))
        plans, trials, end = simulate(config, optimizer)
        assert end is not None and end.status is StudyStatus.completed
        # a candidate stopped for diverging charges less than planned, never more
        assert sum(t.trained for t in trials) <= tuner.planned_charge(config) <= budget
        last = plans[-1]
        assert last.kind is SegmentKind.exploit and last.lr_end == 0.0
        assert last.start_step + last.steps == config.total_steps


def test_a_range_test_is_paid_out_of_the_budget_too() -> None:
    plain = tuner.fit_charged_budget(charged(1000))
    ranged = tuner.fit_charged_budget(charged(1000, lr_bounds="range_test", range_test_steps=100))
    assert ranged.total_steps is not None and plain.total_steps is not None
    assert ranged.total_steps < plain.total_steps
    assert tuner.planned_charge(ranged) <= 1000


def test_without_charged_steps_the_config_is_unchanged() -> None:
    config = config_of(lr_min=1e-3, lr_max=1.0, total_steps=500)
    assert tuner.fit_charged_budget(config) is config


def test_total_steps_and_charged_steps_together_must_fit() -> None:
    fitting = charged(2000, total_steps=1000)
    assert tuner.fit_charged_budget(fitting) is fitting
    with pytest.raises(ValueError, match=r"total_steps = 1900 plans \d+ charged steps"):
        tuner.fit_charged_budget(charged(2000, total_steps=1900))


def test_a_budget_too_small_for_any_plan_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="too small for any plan.*raise it"):
        tuner.fit_charged_budget(charged(50, lr_bounds="range_test", range_test_steps=100))


def test_an_open_ended_study_has_no_planned_charge() -> None:
    with pytest.raises(ValueError, match="open-ended"):
        tuner.planned_charge(config_of(lr_min=1e-3, lr_max=1.0))


# ------------------------------------------------------------------ live


@pytest.mark.slow
def test_a_job_given_its_compute_trains_within_it(live_server) -> None:
    """The real client against the live server: the job names its compute, the service
    stores the fitted trajectory, and the whole study, search included, charges no more."""
    budget = 600

    def open_tuner() -> stagelr.Tuner:
        return stagelr.Tuner(
            live_server.url,
            study="charged-live",
            lr_min=1e-3,
            lr_max=1.0,
            charged_steps=budget,
            tau0=200,
            k=4,
        )

    with open_tuner() as client_tuner:
        assert client_tuner.config.total_steps is None
        record = drive_tuner(client_tuner, SyntheticJob(best_lr=0.05, cliff_lr=0.5, seed=2))
        assert record.status is StudyStatus.completed
        study = client_tuner.study()
        plan = client_tuner.client.get_plan(study.id)
    total = study.config.total_steps
    assert total is not None and study.trajectory_steps == total
    assert study.charged_steps == plan.actual_charge <= plan.planned_charge <= budget
    with httpx.Client(base_url=live_server.url) as api:
        page = api.get(f"/dashboard/studies/{study.id}")
    assert page.status_code == 200
    assert f"{total:,} training steps fitted to a compute budget of 600 charged steps" in page.text
    # asking again with the same request finds the same study
    with open_tuner() as again:
        assert again.study_id == study.id


def test_a_budget_too_small_is_a_422_problem_naming_the_fix(live_server) -> None:
    with httpx.Client(base_url=live_server.url) as api:
        response = api.post(
            "/v1/studies",
            json={
                "name": "charged-too-small",
                "config": {
                    "lr_bounds": "range_test",
                    "range_test_steps": 100,
                    "charged_steps": 50,
                },
            },
        )
        listed = api.get("/v1/studies", params={"name": "charged-too-small"}).json()
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "charged_steps = 50 is too small" in response.json()["detail"]
    assert all(s["name"] != "charged-too-small" for s in listed["studies"])
