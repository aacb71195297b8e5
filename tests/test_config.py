"""Study config validation: presets fill the gaps, bad values get messages that say what to fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stagelr.models import PRESETS, Acquisition, StudyConfig


def test_autolrs_preset_fills_in_the_reference_sizes() -> None:
    config = StudyConfig(preset="autolrs", lr_min=1e-4, lr_max=1.0)
    assert (config.tau0, config.tau_max, config.k, config.explore_ratio) == (1000, 8000, 10, 0.1)
    assert config.acquisition is Acquisition.lcb and config.kappa == 1000.0


def test_explicit_fields_override_the_preset() -> None:
    config = StudyConfig(preset="autolrs", lr_min=1e-4, lr_max=1.0, k=4, acquisition="log_ei")
    assert config.k == 4 and config.acquisition is Acquisition.log_ei


def test_resolved_config_names_every_field() -> None:
    resolved = StudyConfig(lr_min=1e-4, lr_max=1.0).resolved()
    assert set(PRESETS["default"]) <= set(resolved)
    assert all(resolved[key] is not None for key in PRESETS["default"])


def test_resolved_config_round_trips() -> None:
    config = StudyConfig(preset="autolrs", lr_min=1e-4, lr_max=1.0)
    assert StudyConfig.model_validate(config.resolved()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr_min": 1.0, "lr_max": 0.1}, "must be below lr_max"),
        ({"lr_min": 0.0, "lr_max": 0.1}, "greater than 0"),
        ({"lr_min": -1.0, "lr_max": 0.1}, "greater than 0"),
        ({"lr_min": 1e-3, "lr_max": float("inf")}, "finite"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "preset": "fast"}, "preset"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "tau0": 2000, "tau_max": 1000}, "tau_max"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "k": 0}, "greater than or equal to 1"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "acquisition": "ucb"}, "lcb"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "tau0": 4, "explore_ratio": 0.1}, "explore steps"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "unknown_knob": 1}, "Extra inputs"),
    ],
)
def test_bad_config_is_rejected_with_a_message_saying_what_to_fix(fields, message) -> None:
    with pytest.raises(ValidationError, match=message):
        StudyConfig(**fields)
