"""What the quality benchmark's jobs tell the service about themselves: a fine-tune says
it starts from a trained model, as its user would; no other job says anything."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.quality import tuned  # noqa: E402
from benchmarks.quality.workloads import VARIANTS, WORKLOADS  # noqa: E402

from stagelr_service import tuner  # noqa: E402


def test_every_fine_tune_and_only_they_declare_a_trained_start() -> None:
    # The fine-tunes are the workloads that pretrain their model inside the benchmark;
    # their names say so (docs/benchmarks.md, Workloads).
    fine_tunes = {w for w in WORKLOADS if w.endswith("-ft")}
    assert fine_tunes == tuned.PRETRAINED_WORKLOADS
    assert len(fine_tunes) == 7
    for variant in VARIANTS.values():
        facts = tuned.job_facts(variant)
        assert facts == ({"pretrained": True} if variant.workload in fine_tunes else {})


@pytest.mark.parametrize(("preset", "scale"), [("default", 3.0), ("autolrs", 1.0)])
def test_a_fine_tunes_study_resolves_its_presets_scale(preset: str, scale: float) -> None:
    variant = VARIANTS["cnn-ft"]
    request = {
        "preset": preset,
        **tuned.preset_overrides(preset, variant.steps),
        **tuned.job_facts(variant),
        "lr_min": min(variant.grid),
        "lr_max": max(variant.grid),
    }
    resolved = tuner.resolve(request)
    assert resolved.pretrained is True and resolved.horizon_scale == scale
    fresh = tuner.resolve({**request, **tuned.job_facts(VARIANTS["cnn"]), "pretrained": None})
    assert fresh.pretrained is False and fresh.horizon_scale == 1.0
