"""What must hold of a study whose job trained fallback segments during an outage."""

from __future__ import annotations

from typing import Any

import stagelr
from stagelr_service.testing.simulation import DrivenJob, study_decisions


def check_outage_accounted(
    client: stagelr.Client,
    study_id: int,
    record: DrivenJob,
    baseline: list[Any],
    total_steps: int,
) -> None:
    """The service knows every fallback step, the plan shrank to fit them, the decisions
    before the outage are the uninterrupted run's, and every decision replays."""
    study = client.get_study(study_id)
    assert study.offline_steps == record.fallback_steps
    assert study.outages and all(o.steps >= 1 for o in study.outages)
    # The job's steps, fallback ones included, stay within its planned length.
    assert study.trajectory_steps + study.offline_steps <= total_steps
    assert client.get_plan(study_id).total_steps == total_steps - study.offline_steps
    first = study.outages[0].after_seq
    before = [d for d in study_decisions(client, study_id) if d[0] != "stage" and d[0] <= first]
    assert before == [d for d in baseline if d[0] != "stage" and d[0] <= first]
    report = client.replay(study_id)
    assert report.ok, report.mismatches


#: A small study: two stages of three candidates each (a few seconds end to end; the
#: fixed planner, so that the second stage searches too).
STUDY: dict[str, Any] = {
    "planner": "fixed",
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "total_steps": 60,
    "tau0": 20,
    "k": 3,
    "explore_ratio": 0.5,
    "seed": 3,
}
