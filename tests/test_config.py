"""Study config validation: presets fill the gaps, bad values get messages that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stagelr.models import Acquisition, StudyConfig
from stagelr_service.tuner.config import PRESETS, ResolvedConfig, resolve


def config_of(**fields: Any) -> ResolvedConfig:
    """A config as the server resolves a request of ``fields``."""
    return resolve(fields)


def test_autolrs_preset_fills_in_the_reference_sizes() -> None:
    config = config_of(preset="autolrs", lr_min=1e-4, lr_max=1.0)
    assert (config.tau0, config.tau_max, config.k, config.explore_ratio) == (1000, 8000, 10, 0.1)
    assert config.acquisition is Acquisition.lcb and config.kappa == 1000.0


def test_explicit_fields_override_the_preset() -> None:
    config = config_of(preset="autolrs", lr_min=1e-4, lr_max=1.0, k=4, acquisition="log_ei")
    assert config.k == 4 and config.acquisition is Acquisition.log_ei


def test_resolved_config_names_every_field() -> None:
    resolved = config_of(lr_min=1e-4, lr_max=1.0).to_stored()
    assert set(PRESETS["default"]) <= set(resolved)
    assert all(resolved[key] is not None for key in PRESETS["default"])


def test_resolved_config_round_trips() -> None:
    config = config_of(preset="autolrs", lr_min=1e-4, lr_max=1.0)
    assert ResolvedConfig.model_validate(config.to_stored()) == config


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
        config_of(**fields)


def test_the_wire_config_carries_only_what_the_user_set() -> None:
    """The thin client's StudyConfig holds no preset: what is left out stays None, and
    the server's resolution fills it; both name the same fields."""
    request = StudyConfig(lr_min=1e-4, lr_max=1.0, k=4)
    assert request.model_dump(exclude_none=True) == {"lr_min": 1e-4, "lr_max": 1.0, "k": 4}
    assert request.tau0 is None and request.preset is None
    resolved = resolve(request)
    assert resolved.k == 4 and resolved.tau0 == PRESETS["default"]["tau0"]
    assert resolved.preset == "default"
    assert list(ResolvedConfig.model_fields) == list(StudyConfig.model_fields)
    assert resolved.request() == StudyConfig.model_validate(resolved.to_stored())
    assert resolve(resolved.request()) == resolved


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr_min": 1.0, "lr_max": 0.1}, "must be below lr_max"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "tau0": 2000, "tau_max": 1000}, "tau_max"),
        ({"lr_min": 1e-3, "lr_max": 1.0, "k": 0}, "greater than or equal to 1"),
    ],
)
def test_what_the_given_fields_alone_break_is_refused_by_the_client(fields, message) -> None:
    with pytest.raises(ValidationError, match=message):
        StudyConfig(**fields)
