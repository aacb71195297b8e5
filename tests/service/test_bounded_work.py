"""No request costs unbounded work: every config the API accepts has a plan of at most
MAX_STAGES stages, and a segment stores at most about MAX_SEGMENT_POINTS points a metric.
The tests assert the sizes (counts of stages and points), not times;
``benchmarks/bounded_work.py`` prints the times."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import stagelr
from stagelr.models import (
    MAX_SEGMENT_POINTS,
    MAX_STAGES,
    keeps_step,
    point_stride,
)
from stagelr_service import tuner

_names = itertools.count()

#: The audit's config: two-step stages, every one searched with a full-length explore.
TINY_STAGES: dict[str, Any] = {
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "tau0": 2,
    "tau_max": 2,
    "planner": "fixed",
    "explore_ratio": 1.0,
}


def accepted(config: dict[str, Any]) -> tuner.ResolvedConfig | None:
    """The fitted config the service would store, or None if it is refused."""
    try:
        return tuner.fit_charged_budget(tuner.resolve(config))
    except ValueError:  # pydantic's ValidationError included
        return None


@pytest.mark.parametrize("total", [10**6, 4 * 10**6, 10**12])
def test_the_audits_plans_are_refused_naming_the_fix(total: int) -> None:
    with pytest.raises(ValueError, match="raise tau_max"):
        tuner.resolve({**TINY_STAGES, "total_steps": total})
    with pytest.raises(ValueError, match="raise tau_max"):
        tuner.fit_charged_budget(tuner.resolve({**TINY_STAGES, "charged_steps": total}))


def test_every_accepted_config_plans_at_most_max_stages() -> None:
    grid = itertools.product(
        ("fixed", "hold", "budget"),
        (2, 1000, 10**8),  # tau0
        (2, 10**4, 10**8),  # tau_max
        (1.0, 1.0001, 2.0, 16.0),  # tau_growth
        (10**3, 10**6, 10**9, 10**12),  # total_steps or charged_steps
        ("total_steps", "charged_steps"),
    )
    planned = 0
    for planner, tau0, tau_max, growth, steps, budget in grid:
        if tau_max < tau0:
            continue
        config = accepted(
            {
                **TINY_STAGES,
                "planner": planner,
                "tau0": tau0,
                "tau_max": tau_max,
                "tau_growth": growth,
                "explore_ratio": 0.5,
                budget: steps,
            }
        )
        if config is None:
            continue
        stages, _ = tuner.plan_stages(config)
        assert len(stages) <= MAX_STAGES, (planner, tau0, tau_max, growth, steps, budget)
        planned += 1
    assert planned > 100  # the grid's accepted half, not a grid of refusals


def test_a_long_segment_keeps_a_bounded_number_of_points() -> None:
    for steps, report_every in ((100, 7), (MAX_SEGMENT_POINTS, 1), (123_457, 1234), (10**7, 10**5)):
        if steps <= MAX_SEGMENT_POINTS:
            assert point_stride(steps) == 1
            assert all(keeps_step(s, steps, report_every) for s in range(steps + 1))
        kept = sum(1 for s in range(steps + 1) if keeps_step(s, steps, report_every))
        # The stride's points, the cadence's, the last step and step 0.
        assert kept <= MAX_SEGMENT_POINTS + steps // report_every + 2


# --------------------------------------------------------------------------- live


@pytest.fixture()
def api(live_server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        yield client


@pytest.mark.slow
def test_the_api_refuses_an_unbounded_plan_and_serves_the_largest_it_accepts(
    api: httpx.Client,
) -> None:
    refused = api.post(
        "/v1/studies",
        json={"name": f"bounded-{next(_names)}", "config": {**TINY_STAGES, "total_steps": 10**6}},
    )
    assert refused.status_code == 422 and "raise tau_max" in refused.json()["detail"]
    refused = api.post(
        "/v1/studies",
        json={"name": f"bounded-{next(_names)}", "config": {**TINY_STAGES, "charged_steps": 10**6}},
    )
    assert refused.status_code == 422
    # The most stages a plan of this shape may have: close to the cap.
    config = {**TINY_STAGES, "total_steps": 2 * (MAX_STAGES - 5)}
    created = api.post("/v1/studies", json={"name": f"bounded-{next(_names)}", "config": config})
    assert created.status_code == 201, created.text
    study = created.json()["id"]
    plan = api.get(f"/v1/studies/{study}/plan").json()
    assert MAX_STAGES // 2 < len(plan["stages"]) <= MAX_STAGES
    assert api.get(f"/dashboard/studies/{study}").status_code == 200


@pytest.mark.slow
def test_a_long_segment_refuses_points_between_its_stride(live_server) -> None:  # type: ignore[no-untyped-def]
    with stagelr.Tuner(
        live_server.url,
        study=f"bounded-{next(_names)}",
        lr_min=1e-3,
        lr_max=1.0,
        tau0=30_000,
        tau_max=30_000,
        k=2,
        explore_ratio=0.5,
        linger=0.01,
    ) as job:
        segment = job.next_segment()
        assert segment is not None and segment.planned_steps > MAX_SEGMENT_POINTS
        stride = point_stride(segment.planned_steps)
        assert stride == 2
        refused = job.client._http.post(
            f"/v1/segments/{segment.id}/observations",
            json={"observations": [{"step": 1, "value": 1.0}]},
        )
        assert refused.status_code == 422 and f"every {stride}th step" in refused.json()["detail"]
        # The client sends only the steps the service keeps.
        for step in segment.steps():
            segment.report(step, 1.0 / step)
        segment.complete()
        stored = job.client.list_observations(segment.id)
    assert segment.thinned > 0
    assert len(stored) <= MAX_SEGMENT_POINTS + segment.planned_steps // segment.report_every + 1
    assert all(keeps_step(o.step, segment.planned_steps, segment.report_every) for o in stored)
