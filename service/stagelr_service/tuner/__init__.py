"""The tuner: the pure, deterministic AutoLRS state machine.

No HTTP, no database, no clock. Given a study's config and its recorded history it says
what to train next (:func:`next_segment`); replay and tests call it directly.
"""

from ._tuner import (
    REFERENCE_PENALTY,
    analyze_stage,
    candidate_checkpoint,
    checkpoint_name,
    data_seed,
    fit_charged_budget,
    forecast_trial,
    from_unit,
    initial_design,
    next_segment,
    nominal_tau,
    plan_stages,
    planned_charge,
    range_test_bounds,
    range_test_charge,
    search_config,
    stage_geometries,
    stage_geometry,
    stage_posterior,
    to_unit,
)
from ._types import (
    CandidateAnalysis,
    Decision,
    Optimizer,
    PlannedStage,
    StageAnalysis,
    StageGeometry,
    StudyEnd,
    Trial,
)

__all__ = [
    "REFERENCE_PENALTY",
    "CandidateAnalysis",
    "Decision",
    "Optimizer",
    "PlannedStage",
    "StageAnalysis",
    "StageGeometry",
    "StudyEnd",
    "Trial",
    "analyze_stage",
    "candidate_checkpoint",
    "checkpoint_name",
    "data_seed",
    "fit_charged_budget",
    "forecast_trial",
    "from_unit",
    "initial_design",
    "next_segment",
    "nominal_tau",
    "plan_stages",
    "planned_charge",
    "range_test_bounds",
    "range_test_charge",
    "search_config",
    "stage_geometries",
    "stage_geometry",
    "stage_posterior",
    "to_unit",
]
