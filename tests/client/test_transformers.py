"""stagelr.transformers: a tiny BERT trained by Trainer under the callback, live server."""

from __future__ import annotations

import pytest

from tests.framework_runs import check_trained_as_planned, run_example


@pytest.mark.slow
def test_a_hf_trainer_trains_a_whole_study_through_the_callback(live_server, tmp_path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "hf.json"
    stdout = run_example(
        "hf_trainer.py",
        f"--url={live_server.url}",
        "--study=hf-tiny-bert",
        "--total-steps=60",
        "--tau0=20",
        f"--out={out}",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    record = check_trained_as_planned(live_server.url, out)
    # one searched stage (three windows, the best one's check, its training segment),
    # the next trained on at its LR, and the final decay
    assert len(record["segments"]) == 7
    assert "completed: 7 segments" in stdout
